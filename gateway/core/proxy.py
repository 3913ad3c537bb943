"""The proxy path (docs/architecture.md §3.3): request bodies streamed into the upload's fixed S3 parts.

- Bytes flow from the request into `UploadPart` (or a stash segment) with bounded memory (at most
  `proxy_buffer` held per PATCH); no database connection is held meanwhile.
- A part is committed once S3 holds all of it. A PATCH that ends inside a part leaves its tail as an
  immutable stash segment, so any client chunk size makes progress and another instance can continue.
- No lost progress: the bytes read since the last committed boundary are held in memory and saved as a
  segment when the body breaks or the request is cancelled, so the offset in the answer (and the next
  HEAD's: a HEAD or newer PATCH stops this process's running PATCH first) counts every byte read.
- One writer per upload: claiming the upload bumps `writer_gen`; every commit is fenced on it, so a
  preempted PATCH cannot move the offset.
- With `Upload-Checksum` nothing is committed until the whole body is verified: parts written to
  S3 meanwhile are "dirty" and never counted (reconcile only promotes signed parts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from gateway.core.checksums import new_hasher
from gateway.core.completion import Completion
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.limits import Limits
from gateway.core.model import ConfirmedPart, Owner, StashSegment, State, Upload, proxy_part_size
from gateway.core.ports import BodyInterrupted, ByteStore, RequestBody, UploadRepository
from gateway.core.rules import load_alive, offset_mismatch, planned_with_length, quota_exceeded, quota_headroom

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# A HEAD or PATCH of an upload whose PATCH runs here stops that PATCH once its body broke or has been
# silent for RELEASE_IDLE (a drop the gateway has not seen), after at most RELEASE_LIVE, then waits at
# most RELEASE_WAIT for its save (docs/architecture.md §3.3).
RELEASE_IDLE = 1.0
RELEASE_LIVE = 10.0
RELEASE_WAIT = 10.0
RELEASE_POLL = 0.02
# More segments than this for one part are merged into one (bounds the reads a later commit needs).
STASH_COMPACT_AFTER = 16


@dataclass(frozen=True)
class ExpectedChecksum:
    algorithm: str
    digest: bytes


class _Source:
    """Hands out exact byte counts from the body, hashing what passes when a checksum is expected.

    `release` ends the body from outside when a newer request for the same upload arrives
    (docs/architecture.md §3.3), through the body's optional `abort()`."""

    def __init__(self, body: RequestBody, checksum: ExpectedChecksum | None) -> None:
        self.body = body
        self.hasher = new_hasher(checksum.algorithm) if checksum else None
        self.buffer = b""
        self.received = 0
        self.ended = False
        self.interrupted = False
        self.released = False
        self.reading = False
        self.last_byte = time.monotonic()

    @property
    def remaining(self) -> int | None:
        return None if self.body.length is None else self.body.length - self.received

    @property
    def arrived_whole(self) -> bool:
        """Read to its end: neither cut nor stalled, nothing of a declared length missing."""
        return not self.interrupted and self.remaining in (None, 0)

    def idle_for(self) -> float:
        """Seconds the body has been waited for in vain (0 while the PATCH is busy elsewhere)."""
        return time.monotonic() - self.last_byte if self.reading else 0.0

    def release(self) -> None:
        """End the body here, as if the client had dropped it."""
        self.released = True
        abort = getattr(self.body, "abort", None)  # without it, the body ends at its next read
        if abort is not None:
            abort()

    async def has_more(self) -> bool:
        if self.buffer:
            return True
        if self.ended:
            return False
        if self.released:
            self.interrupted = self.ended = True
            return False
        self.reading = True
        try:
            self.buffer = await self.body.read(READ_SIZE)
        except BodyInterrupted:
            self.interrupted = True
            self.buffer = b""
        finally:
            self.reading = False
        if self.buffer:
            self.last_byte = time.monotonic()
        self.ended = not self.buffer
        return not self.ended

    async def read_piece(self, limit: int) -> bytes:
        """The next at most `limit` bytes; b"" at the end of the body."""
        if not await self.has_more():
            return b""
        piece, self.buffer = self.buffer[:limit], self.buffer[limit:]
        self.received += len(piece)
        if self.hasher:
            self.hasher.update(piece)
        return piece

    async def take(self, count: int) -> AsyncIterator[bytes]:
        """Exactly `count` bytes; stops the S3 request (by raising) if the body ends first."""
        left = count
        while left:
            piece = await self.read_piece(left)
            if not piece:
                self.interrupted = True
                raise BodyInterrupted(f"body ended {left} bytes early")
            left -= len(piece)
            yield piece


class ProxyUploads:
    def __init__(self, repo: UploadRepository, data: ByteStore, completion: Completion, limits: Limits) -> None:
        self.repo = repo
        self.data = data
        self.completion = completion
        self.limits = limits
        # This process's running PATCH of each upload, so that a HEAD or a newer PATCH can stop it and
        # wait until it saved what it holds (docs/architecture.md §3.3).
        self.writers: dict[str, _Patch] = {}

    async def release(self, upload_id: str, owner: Owner, *, idle_for: float = RELEASE_IDLE,
                      live_for: float = RELEASE_LIVE) -> bool:
        """A HEAD or PATCH of an upload whose PATCH runs in this process: the client is resuming, so its
        old body is dead or about to be. Let that PATCH read what already arrived (until its body breaks
        or stays silent for `idle_for`, at most `live_for`), stop it, and wait (bounded) until it saved
        what it holds, so the offset read next includes it. True if a PATCH was stopped."""
        writer = self.writers.get(upload_id)
        if writer is None or writer.upload.owner != owner:
            return False
        source = writer.source
        deadline = time.monotonic() + live_for
        while not source.interrupted and source.idle_for() < idle_for and time.monotonic() < deadline \
                and not writer.done.is_set():
            await asyncio.sleep(RELEASE_POLL)
        source.release()
        try:
            await asyncio.wait_for(writer.done.wait(), RELEASE_WAIT)
        except TimeoutError:
            log.warning("the running PATCH of %s did not stop within %.0f s", upload_id, RELEASE_WAIT)
        return True

    async def patch(self, upload_id: str, owner: Owner, offset: int, body: RequestBody, *,
                    declared_length: int | None = None, checksum: ExpectedChecksum | None = None) -> Upload:
        """tus PATCH: append the body at `offset`, optionally declaring the length first."""
        upload, _ = await self._write(upload_id, owner, offset, body, declared_length, checksum)
        return upload

    async def _write(self, upload_id: str, owner: Owner, offset: int, body: RequestBody,
                     declared_length: int | None, checksum: ExpectedChecksum | None) -> tuple[Upload, bool]:
        """The upload after the body, and whether the body arrived to its end (not cut or stalled)."""
        upload = await load_alive(self.repo, upload_id, owner)
        # A newer PATCH preempts the running one anyway: let it save what it holds first, so that the
        # checks below see the offset that includes those bytes.
        if await self.release(upload_id, owner):
            upload = await load_alive(self.repo, upload_id, owner)
        if upload.concat == "final":
            raise UploadError(ErrorCode.MODIFY_FINAL, "a final (concatenated) upload cannot be patched")
        if upload.state is not State.ACTIVE:
            if offset == upload.offset and declared_length in (None, upload.length):
                return upload, False  # a retried final PATCH: 204 without reading the body
            raise offset_mismatch(upload)
        if offset != upload.offset:
            raise offset_mismatch(upload)
        if upload.signed_parts_live or upload.confirmed_beyond_prefix:
            raise UploadError(ErrorCode.PATH_CONFLICT,
                              "parts of this upload are being uploaded with presigned URLs; continue that way")
        # The body must fit the length it declares before the declaration is written.
        max_size = self.limits.max_upload_size
        limit = min(planned_with_length(upload, declared_length, max_size).limit, max_size)
        headroom = await quota_headroom(self.repo, upload) if declared_length is None else None
        if headroom is not None:  # a deferred upload stops where its owner's byte quota ends
            if body.length is not None and offset + body.length > headroom:
                raise quota_exceeded(upload.quota_bytes)
            limit = min(limit, headroom)
        if body.length is not None and offset + body.length > limit:
            raise UploadError(ErrorCode.MAX_SIZE_EXCEEDED, f"the body goes past the upload's end ({limit} bytes)")
        if declared_length is not None:
            upload = await self.completion.declare_length(upload, declared_length)
            if upload.state is not State.ACTIVE:
                return upload, False
        # From the first byte on the proxy path, parts no bigger than the buffer (docs/architecture.md §2).
        smaller = proxy_part_size(upload.length, upload.part_size, self.limits.proxy_buffer) \
            if offset == 0 and upload.length is not None else None
        claimed = await self.repo.claim_writer(upload.id, offset, self.limits.upload_ttl, smaller)
        if claimed is None:
            raise offset_mismatch(await load_alive(self.repo, upload_id, owner))
        writer = _Patch(self, claimed, _Source(body, checksum), checksum, limit)
        self.writers[upload_id] = writer
        try:
            return await writer.run(), writer.source.arrived_whole
        finally:
            writer.done.set()
            if self.writers.get(upload_id) is writer:
                del self.writers[upload_id]

    async def append(self, upload_id: str, owner: Owner, offset: int, body: RequestBody, *,
                     complete: bool) -> Upload:
        """An append that may say "this is the end" (the IETF draft's Upload-Complete): the length
        is then where this body ends, checked against a length announced before."""
        current = await load_alive(self.repo, upload_id, owner)
        if current.state is not State.ACTIVE:
            if body.length == 0:
                raise UploadError(ErrorCode.COMPLETED_UPLOAD, "the upload is already complete")
            raise UploadError(ErrorCode.INCONSISTENT_LENGTH, "the upload is already complete; nothing can be appended")
        declared = offset + body.length if complete and body.length is not None else None
        if declared is not None and current.length is not None and declared != current.length:
            raise UploadError(ErrorCode.INCONSISTENT_LENGTH, f"the upload's length is {current.length}")
        upload, whole = await self._write(upload_id, owner, offset, body,
                                          declared if current.length is None else None, None)
        # A body cut short says nothing about the end: the client resumes from the offset.
        return await self._end_at_offset(upload) if complete and whole else upload

    async def _end_at_offset(self, upload: Upload) -> Upload:
        """Declare that the upload ends where its bytes end (a body of unknown length said it was the
        last); a stash holding the last bytes then becomes the final part."""
        if upload.length is not None or upload.state is not State.ACTIVE:
            return upload
        return await self.patch(upload.id, upload.owner, upload.offset, _EmptyBody(), declared_length=upload.offset)


class _EmptyBody:
    length: int | None = 0

    async def read(self, limit: int) -> bytes:
        return b""

    def abort(self) -> None:
        pass


class _Patch:
    """One PATCH request's walk through the parts it fills.

    Bytes read from the body but not yet in a committed part or segment are `held` in memory (at most
    `proxy_buffer`): when the body breaks, is released or the request is cancelled, they become a stash
    segment, so the offset keeps everything received (docs/architecture.md §3.3). With a checksum
    nothing is kept on a break, so nothing is held for it."""

    def __init__(self, proxy: ProxyUploads, upload: Upload, source: _Source,
                 checksum: ExpectedChecksum | None, limit: int) -> None:
        self.repo = proxy.repo
        self.completion = proxy.completion
        self.key_prefix = proxy.limits.s3_key_prefix
        self.buffer_size = proxy.limits.proxy_buffer
        self.data = proxy.data
        self.upload = upload
        self.gen = upload.writer_gen
        self.source = source
        self.checksum = checksum
        self.keep_on_break = checksum is None
        self.limit = limit
        self.ttl = proxy.limits.upload_ttl
        self.stash = list(upload.stash)
        self.next_part = upload.prefix_parts + 1
        self.seq = max((s.seq for s in upload.stash), default=0)
        self.held: list[bytes] = []
        self.held_size = 0
        self.saving = asyncio.Lock()  # one save of the held bytes at a time
        self.closed = False  # cancelled: the held bytes are being saved, nothing more is held
        self.failure: Exception | None = None  # what broke a save inside an UploadPart body
        self.done = asyncio.Event()
        # With a checksum, commits wait until the body is verified.
        self.held_parts: list[ConfirmedPart] = []
        self.held_stash: list[StashSegment] = []
        self.superseded: list[str] = []

    @property
    def written(self) -> int:
        """The upload's offset once this PATCH's parts and segments so far count (held bytes excluded)."""
        start = (self.next_part - 1) * self.upload.part_size
        return min(start + sum(s.size for s in self.stash), self.limit)

    async def run(self) -> Upload:
        try:
            await self._stream()
        except asyncio.CancelledError:
            # The handler is cancelled (its client left under aiohttp's handler cancellation, or the
            # shutdown timeout): the bytes received still count.
            self.closed = True
            self.source.interrupted = True  # a HEAD meanwhile waits for the save (ProxyUploads.release)
            if self.keep_on_break and self.held_size:
                await asyncio.shield(self._store_held(compact=False))
            raise
        if self.source.interrupted:
            log.info("PATCH on %s ended early; kept %d bytes", self.upload.id, self.written)
        if self.checksum is not None:
            await self._verify_and_commit()
        if self.source.remaining is None and self.written >= self.limit and await self.source.has_more():
            raise UploadError(ErrorCode.MAX_SIZE_EXCEEDED, "the body goes past the upload's end")
        await self._discard(self.superseded)
        return self.upload

    async def _stream(self) -> None:
        upload = self.upload
        while upload.part_count is None or self.next_part <= upload.part_count:
            if self.source.interrupted:
                return  # what arrived is saved; an UploadPart now could only fail
            part_length = upload.part_range(self.next_part)[1]
            need = part_length - sum(s.size for s in self.stash)
            remaining = self.source.remaining
            # need == 0: a length declaration made the stash a whole (final) part.
            if need > 0 and (self.written >= self.limit or remaining == 0
                             or (remaining is None and not await self.source.has_more())):
                return
            if need == 0 or (remaining is not None and remaining >= need):
                if not await self._write_part(part_length, need):
                    return
            elif not await self._write_buffered(need):
                return

    async def _write_buffered(self, need: int) -> bool:
        """A chunked body (S3 needs every size up front) or a sized body that ends inside the part:
        read at most the buffer into memory, then make it the part or a stash segment."""
        want = min(need, self.buffer_size, self.limit - self.written)
        while self.held_size < want and (piece := await self.source.read_piece(want - self.held_size)):
            self.held.append(piece)
            self.held_size += len(piece)
        if not self.held_size:
            return False
        if self.written + self.held_size >= self.limit and await self.source.has_more():
            # The body runs past the upload's end: refuse before the last part could complete the
            # upload with the wrong bytes (whole parts before it stay, as the offset says).
            raise UploadError(ErrorCode.MAX_SIZE_EXCEEDED, "the body goes past the upload's end",
                              details={"offset": self.upload.offset})
        if self.source.interrupted and not self.keep_on_break:
            return False  # a cut checksummed body keeps nothing
        if self.held_size == need:
            return await self._write_part(need + sum(s.size for s in self.stash), need, list(self.held))
        await asyncio.shield(self._store_held(compact=True))
        return True

    async def _write_part(self, part_length: int, need: int, tail: list[bytes] | None = None) -> bool:
        """UploadPart of exactly the part's size: the stash segments, then `tail` (held in memory) or
        `need` bytes streamed from the body (and held as they pass, unless a checksum is expected)."""
        body_tail: AsyncIterator[bytes] | None = None
        if tail is not None:
            body_tail = _iterate(tail)
        elif need:
            body_tail = self._hold(self.source.take(need)) if self.keep_on_break else self.source.take(need)
        body = self._chain(list(self.stash), body_tail)
        try:
            etag = await self.data.upload_part(self.upload.key, self.upload.multipart_id or "", self.next_part,
                                               part_length, body)
        except Exception:
            if self.failure is not None:
                raise self.failure from None
            if self.source.interrupted:
                # The part could not be whole: what arrived of it becomes a segment (none with a checksum).
                if self.keep_on_break and self.held_size:
                    await asyncio.shield(self._store_held(compact=False))
                return False
            raise
        part = ConfirmedPart(self.next_part, part_length, etag)
        superseded = [s.key for s in self.stash]
        self.held, self.held_size = [], 0
        self.stash = []
        self.next_part += 1
        if self.checksum is not None:
            self.held_parts.append(part)
            self.superseded.extend(superseded)
        else:
            await self._commit_parts([part])
            await self._discard(superseded)  # at once: a long PATCH would pile them up
        return True

    async def _hold(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass the body on to UploadPart, keeping a copy of what passed until the part is committed.
        A part bigger than the buffer is saved a buffer at a time as stash segments meanwhile (each
        buffer is then written twice; the part's commit supersedes them)."""
        async for piece in pieces:
            if self.closed:
                raise BodyInterrupted("the request was cancelled")
            if self.held_size + len(piece) > self.buffer_size:
                try:
                    await asyncio.shield(self._store_held(compact=False))
                except Exception as exc:  # raised again by _write_part: aiohttp wraps what a body raises
                    self.failure = exc
                    raise
            self.held.append(piece)
            self.held_size += len(piece)
            yield piece

    async def _store_held(self, *, compact: bool) -> None:
        """The held bytes as one stash segment, committed (fenced) at once or, with a checksum, once
        verified. Runs shielded: a cancelled request must not lose track of a commit it made."""
        async with self.saving:
            if not self.held_size:
                return
            pieces, size = list(self.held), self.held_size
            segment = self._new_segment(size)
            await self.data.put_object(segment.key, size, _iterate(pieces))
            if self.checksum is not None:
                self.held_stash.append(segment)
                self.stash.append(segment)  # a later part of this PATCH is built on it
            else:
                await self._commit_stash(segment, compact=compact)
            del self.held[:len(pieces)]
            self.held_size -= size

    def _new_segment(self, size: int) -> StashSegment:
        self.seq += 1
        key = "/".join(p for p in (self.key_prefix, "stash", self.upload.id, str(self.next_part),
                                   f"{self.gen}-{self.seq}") if p)
        return StashSegment(self.next_part, self.seq, key, size)

    async def _chain(self, segments: Sequence[StashSegment], tail: AsyncIterator[bytes] | None
                     ) -> AsyncIterator[bytes]:
        for segment in segments:
            async for chunk in self.data.read_object(segment.key):
                yield chunk
        if tail is not None:
            async for chunk in tail:
                yield chunk

    async def _commit_parts(self, parts: list[ConfirmedPart]) -> None:
        recorded = await self.completion.record_parts(self.upload.id, parts, writer_gen=self.gen)
        if recorded is None:
            raise _preempted()
        self.upload = recorded

    async def _commit_stash(self, segment: StashSegment, *, compact: bool = True) -> None:
        upload = await self.repo.add_stash(self.upload.id, self.gen, segment, self.ttl)
        if upload is None:
            await self._discard([segment.key])
            raise _preempted()
        self.upload = upload
        self.stash.append(segment)
        # Not while a part is streaming or a break is being saved: the part's commit supersedes them.
        if compact and len(self.stash) > STASH_COMPACT_AFTER:
            await self._compact()

    async def _compact(self) -> None:
        """Merge the part's segments into one, streamed S3 to S3 through this process."""
        old = self.stash
        merged = self._new_segment(sum(s.size for s in old))
        await self.data.put_object(merged.key, merged.size, self._chain(old, None))
        if not await self.repo.replace_stash(self.upload.id, self.gen, merged):
            await self._discard([merged.key])
            raise _preempted()
        self.stash = [merged]
        self.superseded.extend(s.key for s in old)

    async def _verify_and_commit(self) -> None:
        assert self.checksum is not None and self.source.hasher is not None
        complete = not self.source.interrupted and (await self._drained())
        held_keys = [s.key for s in self.held_stash]
        if not complete or self.source.hasher.digest() != self.checksum.digest:
            await self._discard(held_keys)
            self.held_parts, self.held_stash, self.superseded = [], [], []
            if complete:
                raise UploadError(ErrorCode.CHECKSUM_MISMATCH,
                                  f"the body does not match its {self.checksum.algorithm} checksum; it was discarded")
            return
        if self.held_parts:
            await self._commit_parts(self.held_parts)
        # Held segments that went into a held part are superseded; the rest stay as the stash.
        for segment in self.held_stash:
            if segment.key not in self.superseded:
                self.stash.remove(segment)
                await self._commit_stash(segment)

    async def _drained(self) -> bool:
        """A checksum covers the whole body: it only counts if no byte is left unread."""
        return not await self.source.has_more()

    async def _discard(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            await self.data.delete_objects(keys)
        except UploadError as exc:  # the stash prefix's lifecycle rule removes leftovers
            log.warning("could not delete superseded stash objects of %s: %s", self.upload.id, exc)


async def _iterate(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def _preempted() -> UploadError:
    return UploadError(ErrorCode.WRITER_PREEMPTED, "a newer request took over this upload; resume from HEAD")
