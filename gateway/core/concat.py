"""tus concatenation: a final upload assembled from partial uploads inside S3.

Parts of the final object are server-side copies (UploadPartCopy) of ranges of the partials'
objects, so the bytes do not pass through the gateway. S3 wants every part but the last to be at
least 5 MiB: where partials are smaller, their bytes (at most 5 MiB per such part) are streamed
through the gateway into a part of their own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from gateway.core import metadata as md
from gateway.core.completion import Completion
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.limits import Limits
from gateway.core.model import (
    NO_ALLOWANCE,
    S3_MAX_PART_SIZE,
    S3_MIN_PART_SIZE,
    Allowance,
    ConfirmedPart,
    NewUpload,
    Owner,
    State,
    Upload,
    new_upload_id,
    object_key,
)
from gateway.core.ports import ByteStore, ObjectStore, UploadRepository
from gateway.core.rules import RETRY_AFTER_COMPLETING, load_owned, quota_exceeded, quota_for, size_limit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    key: str
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class PlannedPart:
    number: int
    pieces: tuple[Piece, ...]
    copy: bool  # one range of one object, copied inside S3

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)


def plan_parts(sources: Sequence[tuple[str, int]]) -> list[PlannedPart]:
    """Parts for the concatenation of (key, length) sources, every part but the last >= 5 MiB."""
    # What is left of each source: (key, next byte, end).
    queue = [Piece(key, 0, length) for key, length in sources if length > 0]
    parts: list[PlannedPart] = []
    while queue:
        head = queue[0]
        if head.size >= S3_MIN_PART_SIZE:
            take = min(head.size, S3_MAX_PART_SIZE)
            parts.append(PlannedPart(len(parts) + 1, (Piece(head.key, head.start, head.start + take),), copy=True))
            queue[0] = Piece(head.key, head.start + take, head.end)
        else:
            pieces: list[Piece] = []
            size = 0
            while queue and size < S3_MIN_PART_SIZE:
                head = queue[0]
                take = min(head.size, S3_MIN_PART_SIZE - size)
                pieces.append(Piece(head.key, head.start, head.start + take))
                size += take
                queue[0] = Piece(head.key, head.start + take, head.end)
                if queue[0].size == 0:
                    queue.pop(0)
            parts.append(PlannedPart(len(parts) + 1, tuple(pieces), copy=False))
            continue
        if queue[0].size == 0:
            queue.pop(0)
    return parts


class Concatenation:
    def __init__(self, repo: UploadRepository, store: ObjectStore, data: ByteStore, completion: Completion,
                 limits: Limits) -> None:
        self.repo = repo
        self.store = store
        self.data = data
        self.completion = completion
        self.limits = limits

    async def create_final(self, owner: Owner, partial_ids: Sequence[str], metadata: Mapping[str, str | None],
                           allowance: Allowance = NO_ALLOWANCE) -> Upload:
        limits = self.limits
        if not partial_ids:
            raise UploadError(ErrorCode.INVALID_CONCAT, "Upload-Concat: final needs at least one partial upload")
        if len(partial_ids) > limits.concat_max_partials:
            raise UploadError(ErrorCode.INVALID_CONCAT,
                              f"a final upload joins at most {limits.concat_max_partials} partial uploads")
        partials = [await self._partial(owner, upload_id) for upload_id in partial_ids]
        length = sum(p.length or 0 for p in partials)
        largest = size_limit(limits, allowance)
        if length > largest:
            raise UploadError(ErrorCode.MAX_SIZE_EXCEEDED, f"the concatenation exceeds {largest} bytes")
        # The bytes S3 will copy count against the owner's quota like an upload of that length would.
        quota = quota_for(limits, allowance)
        if quota is not None and await self.repo.active_bytes(owner, "") + length > quota.max_bytes:
            raise quota_exceeded(quota.max_bytes)
        plan = plan_parts([(p.key, p.length or 0) for p in partials])
        streamed = sum(part.size for part in plan if not part.copy)
        if streamed > limits.concat_max_streamed:
            raise UploadError(ErrorCode.INVALID_CONCAT,
                              f"the partial uploads are too small: {streamed} bytes would pass through the gateway "
                              f"(at most {limits.concat_max_streamed}); make every partial but the last >= 5 MiB")
        kept = md.validate_metadata(metadata)
        upload_id = new_upload_id()
        key = object_key(limits.s3_key_prefix, upload_id)
        content_type = md.content_type(kept)
        s3_meta = md.object_metadata(upload_id, kept)
        store = self.store
        if not plan:
            await store.put_empty(key, content_type=content_type, metadata=s3_meta, filename=md.filename(kept))
            multipart_id = None
        else:
            multipart_id = await store.create_multipart(key, content_type=content_type, metadata=s3_meta,
                                                        checksum=None, filename=md.filename(kept))
            try:
                parts = [await self._assemble(key, multipart_id, part) for part in plan]
                await store.complete(key, multipart_id, parts, None)
            except BaseException:
                await store.abort(key, multipart_id)
                raise
        new = NewUpload(id=upload_id, owner=owner, length=length, part_size=max((p.size for p in plan), default=0)
                        or S3_MIN_PART_SIZE, part_checksum=None, metadata=kept, bucket=limits.s3_bucket, key=key,
                        multipart_id=multipart_id, state=State.COMPLETED, concat="final",
                        concat_partials=tuple(partial_ids))
        # No quota: a finished upload does not count against the owner's active uploads.
        upload = await self.repo.insert(new, limits.upload_ttl, limits.upload_max_age)
        assert upload is not None
        log.info("final upload %s assembled from %d partial(s) in %d part(s)", upload_id, len(partials), len(plan))
        return upload

    async def _partial(self, owner: Owner, upload_id: str) -> Upload:
        try:
            partial = await load_owned(self.repo, upload_id, owner)
        except UploadError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                raise UploadError(ErrorCode.INVALID_CONCAT, f"partial upload {upload_id} not found") from None
            raise
        if partial.concat != "partial":
            raise UploadError(ErrorCode.INVALID_CONCAT, f"upload {upload_id} is not a partial upload")
        if partial.state is State.COMPLETING:
            # Its client saw offset = length, so for tus it is finished; S3 is still assembling it, or the
            # instance doing so died: take over once its lease lapsed, else ask the client to retry.
            await self.completion.take_over(partial)
            partial = await load_owned(self.repo, upload_id, owner)
            if partial.state is State.COMPLETING:
                raise UploadError(ErrorCode.COMPLETING, f"partial upload {upload_id} is being completed; try again",
                                  retry_after=RETRY_AFTER_COMPLETING)
        if partial.state is not State.COMPLETED:
            raise UploadError(ErrorCode.UPLOAD_NOT_FINISHED, f"partial upload {upload_id} is not finished")
        return partial

    async def _assemble(self, key: str, multipart_id: str, part: PlannedPart) -> ConfirmedPart:
        if part.copy:
            piece = part.pieces[0]
            etag = await self.store.upload_part_copy(key, multipart_id, part.number, piece.key,
                                                             piece.start, piece.end)
        else:
            etag = await self.data.upload_part(key, multipart_id, part.number, part.size, self._read(part.pieces))
        return ConfirmedPart(part.number, part.size, etag)

    async def _read(self, pieces: Sequence[Piece]) -> AsyncIterator[bytes]:
        for piece in pieces:
            async for chunk in self.data.read_object(piece.key, piece.start, piece.end):
                yield chunk
