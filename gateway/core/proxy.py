"""The proxy path (docs/architecture.md §3.3): request bodies streamed into the upload's fixed S3 parts.

- Bytes flow from the request into `UploadPart` (or a stash segment) with bounded memory; no
  database connection is held meanwhile.
- A part is committed once S3 holds all of it. A PATCH that arrives whole but ends inside a part
  leaves its tail as an immutable stash segment, so any client chunk size makes progress and
  another instance can continue. A dropped connection or a chunked body keeps only what reached a
  committed part or stash boundary; the offset in the answer says so.
- One writer per upload: claiming the upload bumps `writer_gen`; every commit is fenced on it, so a
  preempted PATCH cannot move the offset.
- With `Upload-Checksum` nothing is committed until the whole body is verified: parts written to
  S3 meanwhile are "dirty" and never counted (reconcile only promotes signed parts).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from gateway.core.checksums import new_hasher
from gateway.core.completion import Completion
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.limits import Limits
from gateway.core.model import ConfirmedPart, Owner, StashSegment, State, Upload
from gateway.core.ports import BodyInterrupted, ByteStore, RequestBody, UploadRepository
from gateway.core.rules import load_alive, offset_mismatch, planned_with_length, quota_exceeded, quota_headroom

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# A body without Content-Length is kept in stash segments of at most this size (bounded memory),
# since S3 needs the size of every object before its first byte.
CHUNKED_SEGMENT = 8 * 1024 * 1024
# More segments than this for one part are merged into one (bounds the reads a later commit needs).
STASH_COMPACT_AFTER = 16


@dataclass(frozen=True)
class ExpectedChecksum:
    algorithm: str
    digest: bytes


class _Source:
    """Hands out exact byte counts from the body, hashing what passes when a checksum is expected."""

    def __init__(self, body: RequestBody, checksum: ExpectedChecksum | None) -> None:
        self.body = body
        self.hasher = new_hasher(checksum.algorithm) if checksum else None
        self.buffer = b""
        self.received = 0
        self.ended = False
        self.interrupted = False

    @property
    def remaining(self) -> int | None:
        return None if self.body.length is None else self.body.length - self.received

    @property
    def arrived_whole(self) -> bool:
        """Read to its end: neither cut nor stalled, nothing of a declared length missing."""
        return not self.interrupted and self.remaining in (None, 0)

    async def has_more(self) -> bool:
        if self.buffer:
            return True
        if self.ended:
            return False
        try:
            self.buffer = await self.body.read(READ_SIZE)
        except BodyInterrupted:
            self.interrupted = True
            self.buffer = b""
        self.ended = not self.buffer
        return not self.ended

    async def read_up_to(self, count: int) -> bytes:
        """Up to `count` bytes, fewer only at the end of the body."""
        pieces = []
        left = count
        while left and await self.has_more():
            piece, self.buffer = self.buffer[:left], self.buffer[left:]
            pieces.append(piece)
            left -= len(piece)
        data = b"".join(pieces)
        self.received += len(data)
        if self.hasher:
            self.hasher.update(data)
        return data

    async def take(self, count: int) -> AsyncIterator[bytes]:
        """Exactly `count` bytes; stops the S3 request (by raising) if the body ends first."""
        left = count
        while left:
            if not await self.has_more():
                self.interrupted = True
                raise BodyInterrupted(f"body ended {left} bytes early")
            piece, self.buffer = self.buffer[:left], self.buffer[left:]
            left -= len(piece)
            self.received += len(piece)
            if self.hasher:
                self.hasher.update(piece)
            yield piece


class ProxyUploads:
    def __init__(self, repo: UploadRepository, data: ByteStore, completion: Completion, limits: Limits) -> None:
        self.repo = repo
        self.data = data
        self.completion = completion
        self.limits = limits

    async def patch(self, upload_id: str, owner: Owner, offset: int, body: RequestBody, *,
                    declared_length: int | None = None, checksum: ExpectedChecksum | None = None) -> Upload:
        """tus PATCH: append the body at `offset`, optionally declaring the length first."""
        upload, _ = await self._write(upload_id, owner, offset, body, declared_length, checksum)
        return upload

    async def _write(self, upload_id: str, owner: Owner, offset: int, body: RequestBody,
                     declared_length: int | None, checksum: ExpectedChecksum | None) -> tuple[Upload, bool]:
        """The upload after the body, and whether the body arrived to its end (not cut or stalled)."""
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
        claimed = await self.repo.claim_writer(upload.id, offset, self.limits.upload_ttl)
        if claimed is None:
            raise offset_mismatch(await load_alive(self.repo, upload_id, owner))
        writer = _Patch(self, claimed, _Source(body, checksum), checksum, limit)
        return await writer.run(), writer.source.arrived_whole

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


class _Patch:
    """One PATCH request's walk through the parts it fills."""

    def __init__(self, proxy: ProxyUploads, upload: Upload, source: _Source,
                 checksum: ExpectedChecksum | None, limit: int) -> None:
        self.repo = proxy.repo
        self.completion = proxy.completion
        self.key_prefix = proxy.limits.s3_key_prefix
        self.data = proxy.data
        self.upload = upload
        self.gen = upload.writer_gen
        self.source = source
        self.checksum = checksum
        self.limit = limit
        self.ttl = proxy.limits.upload_ttl
        self.stash = list(upload.stash)
        self.next_part = upload.prefix_parts + 1
        self.written = upload.offset
        self.seq = max((s.seq for s in upload.stash), default=0)
        # With a checksum, commits wait until the body is verified.
        self.held_parts: list[ConfirmedPart] = []
        self.held_stash: list[StashSegment] = []
        self.superseded: list[str] = []

    async def run(self) -> Upload:
        await self._stream()
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
            part_length = upload.part_range(self.next_part)[1]
            need = part_length - sum(s.size for s in self.stash)
            remaining = self.source.remaining
            # need == 0: a length declaration made the stash a whole (final) part.
            if need > 0 and (self.written >= self.limit or remaining == 0
                             or (remaining is None and not await self.source.has_more())):
                return
            if remaining is None and need > 0:
                if not await self._write_unsized(need):
                    return
            elif remaining is not None and remaining < need:
                await self._write_stash(remaining)
                return
            elif not await self._write_part(part_length, need):
                return

    async def _write_unsized(self, need: int) -> bool:
        """A chunked body: read at most a bounded segment, then make it a part or a stash segment."""
        data = await self.source.read_up_to(min(need, CHUNKED_SEGMENT, self.limit - self.written))
        if not data:
            return False
        if self.written + len(data) >= self.limit and await self.source.has_more():
            # The body runs past the upload's end: refuse before the last part could complete the
            # upload with the wrong bytes (whole parts before it stay, as the offset says).
            raise UploadError(ErrorCode.MAX_SIZE_EXCEEDED, "the body goes past the upload's end",
                              details={"offset": self.upload.offset})
        if len(data) == need:
            return await self._write_part(need + sum(s.size for s in self.stash), need, _once(data))
        await self._write_stash(len(data), _once(data))
        return True

    async def _write_part(self, part_length: int, need: int, tail: AsyncIterator[bytes] | None = None) -> bool:
        if tail is None and need:
            tail = self.source.take(need)
        body = self._chain(self.stash, tail)
        try:
            etag = await self.data.upload_part(self.upload.key, self.upload.multipart_id or "", self.next_part,
                                               part_length, body)
        except Exception:
            if self.source.interrupted:
                return False  # bytes after the last boundary are dropped; the offset says so
            raise
        part = ConfirmedPart(self.next_part, part_length, etag)
        self.superseded.extend(s.key for s in self.stash)
        self.stash = []
        self.next_part += 1
        self.written += need
        if self.checksum is not None:
            self.held_parts.append(part)
        else:
            await self._commit_parts([part])
        return True

    async def _write_stash(self, size: int, body: AsyncIterator[bytes] | None = None) -> None:
        segment = self._new_segment(size)
        try:
            await self.data.put_object(segment.key, size, body or self.source.take(size))
        except Exception:
            if self.source.interrupted:
                return
            raise
        self.written += size
        if self.checksum is not None:
            self.held_stash.append(segment)
            self.stash.append(segment)  # a later part of this PATCH is built on it
            return
        await self._commit_stash(segment)

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

    async def _commit_stash(self, segment: StashSegment) -> None:
        upload = await self.repo.add_stash(self.upload.id, self.gen, segment, self.ttl)
        if upload is None:
            await self._discard([segment.key])
            raise _preempted()
        self.upload = upload
        self.stash.append(segment)
        if len(self.stash) > STASH_COMPACT_AFTER:
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


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _preempted() -> UploadError:
    return UploadError(ErrorCode.WRITER_PREEMPTED, "a newer request took over this upload; resume from HEAD")
