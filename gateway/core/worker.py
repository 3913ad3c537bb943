"""Background work every instance runs; safe with many instances (rows are leased in Postgres)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.core.completion import CompletionWorker
from gateway.core.errors import UploadError
from gateway.core.model import Upload
from gateway.core.ports import ObjectStore, UploadRepository

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    expired: int = 0
    completed: int = 0
    orphans_aborted: int = 0
    tombstones_purged: int = 0
    events_purged: int = 0


class Sweeper:
    """Expiry and cleanup: expired uploads, leftovers of dead processes, S3 uploads without a row."""

    def __init__(self, repo: UploadRepository, store: ObjectStore, completion: CompletionWorker, *,
                 key_prefix: str, tombstone_days: int, orphan_grace: float, batch: int = 200) -> None:
        self.repo = repo
        self.store = store
        self.key_prefix = key_prefix
        self.completion = completion
        self.tombstone_days = tombstone_days
        self.orphan_grace = orphan_grace
        self.batch = batch
        # Listing every in-progress S3 upload is O(uploads): done once per grace period, not per sweep.
        self.next_orphan_scan = 0.0

    async def run_once(self) -> SweepReport:
        report = SweepReport()
        while expired := await self.repo.expire_batch(self.batch):
            report.expired += len(expired)
            await asyncio.gather(*(self._release(u) for u in expired))
            if len(expired) < self.batch:
                break
        report.completed = await self.completion.run_once()
        if time.monotonic() >= self.next_orphan_scan:
            self.next_orphan_scan = time.monotonic() + max(self.orphan_grace, 60.0)
            report.orphans_aborted = await self._abort_orphans()
        report.tombstones_purged, report.events_purged = await self.repo.purge_ended(
            self.tombstone_days, event_days=7, limit=10_000)
        return report

    async def _release(self, upload: Upload) -> None:
        store = self.store
        try:
            if upload.multipart_id:
                await store.abort(upload.key, upload.multipart_id)
            if upload.stash:
                await store.delete_objects([s.key for s in upload.stash])
        except UploadError as exc:  # the orphan pass and the bucket's lifecycle rules catch what is left
            log.warning("sweeper: cleanup of expired upload %s failed: %s", upload.id, exc)

    async def _abort_orphans(self) -> int:
        """S3 multipart uploads under our prefix whose row is gone or ended (a crash between
        CreateMultipartUpload and the INSERT, or an abort that failed), after a grace period."""
        store = self.store
        cutoff = datetime.now(UTC) - timedelta(seconds=self.orphan_grace)
        aborted = 0
        batch: list[tuple[str, str]] = []

        async def flush() -> int:
            live = await self.repo.live_multipart_ids([mid for _, mid in batch])
            dead = [(key, mid) for key, mid in batch if mid not in live]
            await asyncio.gather(*(store.abort(key, mid) for key, mid in dead))
            batch.clear()
            return len(dead)

        prefix = self.key_prefix
        async for listing in store.list_multipart_uploads(f"{prefix}/" if prefix else ""):
            if listing.initiated < cutoff:
                batch.append((listing.key, listing.multipart_id))
            if len(batch) >= 500:
                aborted += await flush()
        if batch:
            aborted += await flush()
        return aborted


async def run_periodically(name: str, interval: float, job: Callable[[], Awaitable[object]]) -> None:
    """Run `job()` every `interval` seconds until cancelled; a failed run is logged, not fatal."""
    while True:
        try:
            await job()
        except UploadError as exc:
            log.warning("%s: %s", name, exc)
        except Exception:
            log.exception("%s failed", name)
        await asyncio.sleep(interval)
