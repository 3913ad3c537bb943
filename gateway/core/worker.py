"""Background work every instance runs; safe with many instances (rows are leased in Postgres)."""

from __future__ import annotations

import asyncio
import logging

from gateway.core.errors import UploadError
from gateway.core.uploads import UploadService

log = logging.getLogger(__name__)


class CompletionWorker:
    """Finishes uploads left in `completing` by a dead process or a request that ran out of time."""

    def __init__(self, service: UploadService, stale_after: float, batch: int = 20) -> None:
        self.service = service
        self.stale_after = stale_after
        self.batch = batch

    async def run_once(self) -> int:
        claimed = await self.service.repo.claim_stale_completing(self.stale_after, self.batch)
        for upload in claimed:
            try:
                state = await self.service.finish(upload)
                log.info("completion worker: upload %s is %s", upload.id, state.value)
            except UploadError as exc:  # S3 unavailable: the lease expires and a later run retries
                log.warning("completion worker: upload %s not finished: %s", upload.id, exc)
        return len(claimed)

    async def run_forever(self, interval: float) -> None:
        while True:
            try:
                await self.run_once()
            except UploadError as exc:
                log.warning("completion worker: %s", exc)
            await asyncio.sleep(interval)
