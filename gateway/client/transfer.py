"""One pass over an upload's missing parts: sign in batches, PUT each byte range straight to S3, confirm.

`parallel` PUTs stay in flight while signing and confirming run beside them, so S3 sets the pace; one
confirm covers every part finished within CONFIRM_LINGER.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import aiohttp
from yarl import URL

from gateway.client.api import GatewayApi, Plan, SignedPart
from gateway.client.errors import GatewayError, UploadFailed
from gateway.client.retry import ATTEMPTS, NETWORK_ERRORS, RETRY_STATUSES, backoff, describe

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

READ_CHUNK = 1024 * 1024
PROGRESS_INTERVAL = 0.25
MAX_SIGN_BATCH = 1000
SIGN_BATCH_MIN = 16
# Parts whose PUTs finish within this share one confirm: the gateway's cost is per request, and S3 holds
# the parts meanwhile (a resumed run's listing finds them).
CONFIRM_LINGER = 1.0
# No total: a large part on a slow link takes as long as it takes; a silent peer does not.
S3_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")


class Progress:
    """Bytes S3 holds plus bytes on their way, so a large part moves the bar while it uploads."""

    def __init__(self, total: int, done: int) -> None:
        self.total = total
        self.sent = 0  # bytes S3 accepted from this client in this pass
        self._done = done
        self._sending: dict[int, int] = {}

    @property
    def done(self) -> int:
        return self._done + sum(self._sending.values())

    def sending(self, number: int, count: int) -> None:
        self._sending[number] = self._sending.get(number, 0) + count

    def finished(self, number: int, size: int) -> None:
        self._sending.pop(number, None)
        self._done += size
        self.sent += size

    def skipped(self, size: int) -> None:
        """A part confirmed by someone else (a reconcile, another run): S3 holds it, we did not send it."""
        self._done += size

    def failed(self, number: int) -> None:
        """A failed attempt's bytes will be sent again, so they no longer count."""
        self._sending.pop(number, None)


class _Urls:
    """Presigned URLs, signed in batches ahead of the workers so a worker rarely waits for the gateway."""

    def __init__(self, api: GatewayApi, upload_url: str, todo: deque[int], batch: int,
                 on_confirmed: Callable[[int], None]) -> None:
        self._api = api
        self._upload_url = upload_url
        self._todo = todo
        self._batch = batch
        self._on_confirmed = on_confirmed
        self._urls: dict[int, SignedPart] = {}
        self._lock = asyncio.Lock()

    def _fresh(self, number: int) -> bool:
        part = self._urls.get(number)
        return part is not None and part.fresh()

    async def get(self, number: int) -> SignedPart | None:
        """A usable URL for the part, or None when the gateway says the part is already confirmed."""
        if self._fresh(number):  # the usual case: no need to queue behind a signing request
            return self._urls[number]
        # One signing request at a time: a waiting worker usually finds its URL in the batch just signed.
        async with self._lock:
            while True:
                if self._fresh(number):
                    return self._urls[number]
                ahead = islice((n for n in self._todo if not self._fresh(n)), self._batch - 1)
                batch = [number, *ahead]
                try:
                    signed = await self._api.sign(self._upload_url, batch)
                except GatewayError as exc:
                    confirmed = [n for n in exc.parts if n in batch] if exc.code == "part_confirmed" else []
                    if confirmed:
                        # Confirmed since we listed them (a reconcile, another client): S3 has them.
                        for done in confirmed:
                            self._skip(done)
                        if number in confirmed:
                            return None
                    elif exc.code == "batch_too_large" and len(batch) > 1:
                        self._batch = max(1, len(batch) // 2)  # the gateway's limit is configurable
                    else:
                        raise
                    continue
                self._urls.update((part.number, part) for part in signed)
                mine = [part for part in signed if part.number == number]
                if not mine:
                    raise UploadFailed(f"the gateway did not sign part {number}")
                return mine[0]  # just signed: usable even when the gateway's TTL is short

    def forget(self, number: int) -> None:
        self._urls.pop(number, None)

    def _skip(self, number: int) -> None:
        if number in self._todo:
            self._todo.remove(number)
        self.forget(number)
        self._on_confirmed(number)


def _s3_error(body: bytes) -> str:
    fields = dict(_XML_FIELD.findall(body.decode("utf-8", "replace")))
    return f"{fields.get('Code', 'no error code')}: {fields.get('Message', '')}".strip(": ")


class PartTransfer:
    def __init__(self, api: GatewayApi, session: aiohttp.ClientSession, upload_url: str, path: Path,
                 stat: os.stat_result, plan: Plan, missing: list[int], *, parallel: int,
                 progress: Progress, on_progress: ProgressCallback | None) -> None:
        self._api = api
        self._session = session
        self._upload_url = upload_url
        self._path = path
        self._stat = stat
        self._todo = deque(missing)
        self._parallel = parallel
        self._progress = progress
        self._on_progress = on_progress
        self._confirms: asyncio.Queue[int | None] = asyncio.Queue()
        # At least SIGN_BATCH_MIN URLs per request (the gateway's cost is per request), two per worker
        # beyond that; a URL that went stale before its turn is signed again.
        self._urls = _Urls(api, upload_url, self._todo, min(MAX_SIGN_BATCH, max(SIGN_BATCH_MIN, 2 * parallel)),
                           lambda n: progress.skipped(plan.size(n)))

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                reporter = group.create_task(self._report()) if self._on_progress else None
                confirmer = group.create_task(self._confirm_loop())
                count = max(1, min(self._parallel, len(self._todo)))
                await asyncio.wait([group.create_task(self._work()) for _ in range(count)])
                self._confirms.put_nowait(None)
                await asyncio.wait([confirmer])
                if reporter:
                    reporter.cancel()
        except BaseExceptionGroup as group:
            # The first failure is the story; the other tasks were only cancelled because of it.
            raise group.exceptions[0] from None

    async def _report(self) -> None:
        assert self._on_progress is not None
        while True:
            self._on_progress(self._progress.done, self._progress.total)
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def _work(self) -> None:
        while self._todo:
            await self._send(self._todo.popleft())

    async def _send(self, number: int) -> None:
        failure = "no attempt made"
        for attempt in range(ATTEMPTS):
            part = await self._urls.get(number)
            if part is None:
                return
            try:
                status, body = await self._put(part)
            except NETWORK_ERRORS as exc:
                if isinstance(exc.__cause__, UploadFailed):  # raised by our body reader, not the network
                    raise exc.__cause__ from None
                failure = describe(exc)
            else:
                if status == 200:
                    self._urls.forget(number)
                    self._progress.finished(number, part.length)
                    self._confirms.put_nowait(number)
                    return
                failure = f"S3 answered {status} {_s3_error(body)}"
                # 403 is how S3 refuses an expired URL: a new one may do. Other 4xx will not get better.
                if status != 403 and status not in RETRY_STATUSES:
                    raise UploadFailed(f"part {number}: {failure}")
            self._progress.failed(number)
            # Sign again for the next attempt: S3 may refuse an expired URL by closing the connection
            # while the body is still being sent, which looks like a network error.
            self._urls.forget(number)
            if attempt + 1 < ATTEMPTS:
                delay = backoff(attempt)
                log.info("part %d: %s; retrying in %.1f s", number, failure, delay)
                await asyncio.sleep(delay)
        raise UploadFailed(f"part {number}: giving up after {ATTEMPTS} attempts: {failure}")

    async def _put(self, part: SignedPart) -> tuple[int, bytes]:
        with self._path.open("rb") as file:
            now = os.fstat(file.fileno())
            if (now.st_size, now.st_mtime_ns) != (self._stat.st_size, self._stat.st_mtime_ns):
                raise UploadFailed(f"{self._path} changed during the upload; start again")
            # Content-Length is signed into the URL; without it aiohttp would send a chunked body.
            headers = {**part.headers, "Content-Length": str(part.length)}
            # encoded=True: re-quoting the query would break the SigV4 signature.
            async with self._session.put(URL(part.url, encoded=True), data=self._read(file, part),
                                         headers=headers, timeout=S3_TIMEOUT) as response:
                return response.status, await response.read()

    async def _read(self, file: BinaryIO, part: SignedPart) -> AsyncIterator[bytes]:
        """The part's bytes, a chunk at a time: memory stays at about one chunk per PUT in flight."""
        file.seek(part.offset)
        remaining = part.length
        while remaining:
            chunk = await asyncio.to_thread(file.read, min(READ_CHUNK, remaining))
            if not chunk:
                raise UploadFailed(f"{self._path} became shorter during the upload")
            remaining -= len(chunk)
            self._progress.sending(part.number, len(chunk))
            yield chunk

    async def _confirm_loop(self) -> None:
        """Confirm parts in batches beside the PUTs: each part waits at most CONFIRM_LINGER for others to
        share its request (the end of the pass sends what waits at once)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._confirms.get()]
            deadline = loop.time() + CONFIRM_LINGER
            while None not in batch:
                try:
                    batch.append(await asyncio.wait_for(self._confirms.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            numbers = sorted(n for n in batch if n is not None)
            if numbers:
                await self._confirm(numbers)
            if None in batch:
                return

    async def _confirm(self, numbers: list[int]) -> None:
        try:
            await self._api.confirm(self._upload_url, numbers)
        except GatewayError as exc:
            if exc.code != "part_not_visible":
                raise
            # The gateway already retried its listing; the next pass re-lists and re-sends what is missing.
            log.warning("S3 does not list parts %s yet; they will be checked again", exc.parts or numbers)
