"""Upload a local file over the direct path: bytes go straight to S3, the gateway signs and confirms."""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.client.api import GatewayApi, Plan, Status
from gateway.client.errors import GatewayError, UploadFailed
from gateway.client.state import ResumeState, default_state_file, fingerprint
from gateway.client.transfer import PartTransfer, Progress, ProgressCallback

log = logging.getLogger(__name__)

# A pass re-lists the parts and re-sends those S3 does not hold; more than a few means something is wrong.
MAX_PASSES = 4
# The gateway usually completes inline with the last confirm; otherwise its worker does, later.
COMPLETION_WAIT = 60.0
COMPLETION_POLL = 1.0


@dataclass(frozen=True)
class UploadResult:
    url: str
    length: int
    state: str  # "completed", or "completing" when the gateway is still assembling the object
    resumed: bool
    sent: int  # bytes this run sent to S3 (less than length when it resumed)


class DirectUploader:
    """Upload one file to `endpoint` (the gateway's collection URL, e.g. http://host:8080/files).

    Resumable: the upload URL is remembered per file in `state_file`, so running again after a
    failure or an interrupt sends only the parts S3 does not hold yet.
    """

    def __init__(self, endpoint: str, path: str | os.PathLike[str], *, token: str | None = None,
                 parallel: int = 4, part_size: int | None = None, state_file: str | os.PathLike[str] | None = None,
                 on_progress: ProgressCallback | None = None, session: aiohttp.ClientSession | None = None) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.endpoint = endpoint.rstrip("/")
        self.path = Path(path)
        self.token = token
        self.parallel = parallel
        self.part_size = part_size
        self.state = ResumeState(Path(state_file) if state_file is not None else default_state_file())
        self.on_progress = on_progress
        self._session = session

    async def upload(self) -> UploadResult:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise UploadFailed(f"cannot read {self.path}: {exc.strerror or exc}") from None
        key = fingerprint(self.path, stat, self.endpoint)
        async with self._session_scope() as session:
            api = GatewayApi(session, self.token)
            url, status, resumed = await self._open(api, key, stat.st_size)
            sent = 0
            for _ in range(MAX_PASSES):
                missing = status.missing() if status.state == "active" else []
                if not missing:
                    break
                progress = Progress(stat.st_size, stat.st_size - sum(status.plan.size(n) for n in missing))
                transfer = PartTransfer(api, session, url, self.path, stat, status.plan, missing,
                                        parallel=self.parallel, progress=progress, on_progress=self.on_progress)
                await transfer.run()
                sent += progress.sent
                status = await api.status(url)
            status = await self._completion(api, url, status)
        if status.state == "active":
            raise UploadFailed(f"{url}: parts {status.missing()[:10]} are still not confirmed after "
                               f"{MAX_PASSES} passes; run again to resume")
        self.state.forget(key)
        if self.on_progress:
            self.on_progress(stat.st_size, stat.st_size)
        return UploadResult(url, stat.st_size, status.state, resumed, sent)

    async def _open(self, api: GatewayApi, key: str, size: int) -> tuple[str, Status, bool]:
        """The remembered upload of this file if the gateway still has it, else a new one."""
        saved = self.state.get(key)
        if saved:
            try:
                if await api.length(saved) == size:
                    return saved, await api.status(saved), True
                log.warning("%s has another length than %s; starting a new upload", saved, self.path)
            except GatewayError as exc:
                if exc.status not in (404, 410):
                    raise
                log.warning("%s is gone (%s); starting a new upload", saved, exc.code)
        metadata = {"filename": self.path.name}
        filetype = mimetypes.guess_type(self.path.name)[0]
        if filetype:
            metadata["filetype"] = filetype
        url, part_size = await api.create(self.endpoint, size, metadata, self.part_size)
        self.state.put(key, url)
        # A new upload holds no parts: no need to ask. Length 0 completes at creation (docs/architecture.md §3.1).
        return url, Status("active" if size else "completed", Plan(size, part_size), frozenset()), False

    async def _completion(self, api: GatewayApi, url: str, status: Status) -> Status:
        """Wait a little for `completing` to become `completed`; the bytes are all in S3 already."""
        deadline = time.monotonic() + COMPLETION_WAIT
        while status.state == "completing" and time.monotonic() < deadline:
            await asyncio.sleep(COMPLETION_POLL)
            status = await api.status(url)
        return status

    @asynccontextmanager
    async def _session_scope(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self._session is not None:
            yield self._session
            return
        async with aiohttp.ClientSession() as session:
            yield session
