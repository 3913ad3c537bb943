"""In-memory adapters of the core's ports, for fast unit tests without Postgres or S3.

- `MemoryRepository` mirrors the SQL of gateway/db/repository.py and the plpgsql `confirm_parts`
  of migrations/0001_uploads.sql statement by statement: every method is one atomic step (no await
  inside), like one statement under the row lock. Times come from a shared `Clock` (Postgres `now()`),
  which a test can move forward.
- `MemoryObjectStore` is the ObjectStore and the ByteStore: multipart uploads with their parts, objects
  with their bytes. Knobs simulate faults: `fail(operation, times)`, `lose_complete_responses`,
  `hide_new_parts`.
- `MemorySigner` signs `memory://` URLs that say which part they are for; `MemoryObjectStore.put_presigned`
  plays the client's PUT to such a URL.
- `build_world` wires the use cases together the way gateway/app.py does, with small limits.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import math
import random
import uuid
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from gateway.core.completion import Completion, CompletionWorker
from gateway.core.concat import Concatenation
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.limits import Limits
from gateway.core.model import (
    S3_MIN_PART_SIZE,
    ConfirmedPart,
    NewUpload,
    Owner,
    PartChecksum,
    StashSegment,
    State,
    Upload,
)
from gateway.core.ports import (
    BodyInterrupted,
    CompleteRefused,
    ConfirmResult,
    CreateHook,
    ListedPart,
    MultipartListing,
    ObjectHead,
    PartsPage,
    PartToSign,
    SignedPart,
)
from gateway.core.proxy import ProxyUploads
from gateway.core.uploads import PartRequest, UploadService
from gateway.core.worker import Sweeper

MiB = 1024 * 1024
ALICE = Owner("https://issuer.test", "alice")
BOB = Owner("https://issuer.test", "bob")


class Clock:
    """The database's `now()`: wall time plus an offset a test can advance."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def storage_unavailable(operation: str) -> UploadError:
    return UploadError(ErrorCode.STORAGE_UNAVAILABLE, f"storage error during {operation}; retry shortly",
                       retry_after=2)


# -- repository -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One `uploads` row with its `upload_parts`, `signed_part_checksums` and `upload_stash` rows."""
    new: NewUpload
    state: State
    length: int | None
    expires_at: datetime
    max_expires_at: datetime
    created_at: datetime
    ended_at: datetime | None
    prefix_parts: int = 0
    signed_max_part: int = 0
    signed_until: datetime | None = None
    reconciled_at: datetime | None = None
    writer_gen: int = 0
    completing_since: datetime | None = None
    failure_reason: str | None = None
    parts: dict[int, ConfirmedPart] = field(default_factory=dict)
    signed_checksums: dict[int, str] = field(default_factory=dict)
    stash: list[StashSegment] = field(default_factory=list)


class MemoryRepository:
    """UploadRepository over dicts, with the semantics of PgUploadRepository."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.rows: dict[str, Row] = {}
        self.events: list[tuple[str, str]] = []  # (type, upload id), as the outbox would get them
        self.unavailable = False  # True: every call raises DATABASE_UNAVAILABLE

    # helpers

    def _now(self) -> datetime:
        if self.unavailable:
            raise UploadError(ErrorCode.DATABASE_UNAVAILABLE, "the database is unavailable; retry shortly",
                              retry_after=2)
        return self.clock.now()

    @staticmethod
    async def _yield() -> None:
        # Lets concurrent callers interleave between statements, never inside one.
        await asyncio.sleep(0)

    def _slide(self, row: Row, ttl: float, now: datetime) -> None:
        row.expires_at = min(now + timedelta(seconds=ttl), row.max_expires_at)

    def _upload(self, row: Row, now: datetime, *, confirmed_beyond: tuple[int, ...] | None = None,
                stash: tuple[StashSegment, ...] | None = None) -> Upload:
        """The columns of `_select()`: the row plus its flags, computed with the database clock."""
        active = row.state is State.ACTIVE
        signed_past = row.signed_max_part > row.prefix_parts
        # SQL's three-valued logic: a NULL signed_until only matters once reconciled_at is set.
        needs_reconcile = active and signed_past and (
            row.reconciled_at is None
            or (row.signed_until is not None and row.reconciled_at < row.signed_until + timedelta(hours=1)))
        if confirmed_beyond is None:
            confirmed_beyond = tuple(sorted(n for n in row.parts if n > row.prefix_parts))
        if stash is None:
            stash = tuple(sorted(row.stash, key=lambda s: s.seq))
        new = row.new
        return Upload(
            id=new.id, owner=new.owner, length=row.length, part_size=new.part_size,
            part_checksum=new.part_checksum, metadata=dict(new.metadata), bucket=new.bucket, key=new.key,
            multipart_id=new.multipart_id, state=row.state, concat=new.concat,
            concat_partials=new.concat_partials, size_limit=new.size_limit, quota_bytes=new.quota_bytes,
            quota_uploads=new.quota_uploads,
            prefix_parts=row.prefix_parts, expires_at=row.expires_at,
            is_expired=active and row.expires_at <= now,
            signed_max_part=row.signed_max_part, needs_reconcile=needs_reconcile,
            confirmed_beyond_prefix=confirmed_beyond, failure_reason=row.failure_reason,
            signed_parts_live=signed_past and row.signed_until is not None and row.signed_until > now,
            writer_gen=row.writer_gen, stash=stash,
        )

    def _end(self, row: Row, state: State, now: datetime) -> None:
        row.state = state
        row.ended_at = now
        self.events.append((state.value, row.new.id))

    # UploadRepository

    async def insert(self, new: NewUpload, ttl: int, max_age: int) -> Upload | None:
        await self._yield()
        now = self._now()
        if new.id in self.rows:
            raise AssertionError(f"duplicate upload id {new.id}")  # a primary key violation
        if new.state is State.ACTIVE:  # migrations/0007_owner_usage.sql: only active uploads count
            active = [r for r in self.rows.values()
                      if r.new.owner == new.owner and r.state is State.ACTIVE]
            declared = sum(r.length or 0 for r in active) + (new.length or 0)
            if ((new.quota_uploads is not None and len(active) >= new.quota_uploads)
                    or (new.quota_bytes is not None and declared > new.quota_bytes)):
                return None
        row = Row(new=new, state=new.state, length=new.length,
                  expires_at=now + timedelta(seconds=min(ttl, max_age)),
                  max_expires_at=now + timedelta(seconds=max_age), created_at=now,
                  ended_at=None if new.state is State.ACTIVE else now)
        self.rows[new.id] = row
        self.events.append(("created", new.id))
        if new.state is State.COMPLETED:
            self.events.append(("completed", new.id))
        return self._upload(row, now)

    async def get(self, upload_id: str) -> Upload | None:
        await self._yield()
        now = self._now()
        row = self.rows.get(upload_id)
        return self._upload(row, now) if row else None

    async def terminate(self, upload_id: str) -> Upload | None:
        await self._yield()
        now = self._now()
        row = self.rows.get(upload_id)
        if row is None or row.state is State.COMPLETING:
            return None
        row.writer_gen += 1
        self._end(row, State.TERMINATED, now)
        return self._upload(row, now)

    async def record_signed(self, upload_id: str, max_part: int, urls_expire_at: datetime, ttl: int,
                            checksums: Sequence[tuple[int, str]] = ()) -> Upload | None:
        await self._yield()
        now = self._now()
        row = self.rows.get(upload_id)
        if row is None or row.state is not State.ACTIVE or row.expires_at <= now:
            return None
        row.signed_max_part = max(row.signed_max_part, max_part)
        # greatest() ignores NULL
        row.signed_until = urls_expire_at if row.signed_until is None else max(row.signed_until, urls_expire_at)
        self._slide(row, ttl, now)
        for number, checksum in checksums:
            row.signed_checksums[number] = checksum
        return self._upload(row, now)

    async def declare_length(self, upload_id: str, length: int, ttl: int) -> tuple[Upload | None, bool]:
        await self._yield()
        now = self._now()
        row = self.rows.get(upload_id)
        if row is None or row.state is not State.ACTIVE or row.length is not None:
            return None, False
        quota = row.new.quota_bytes
        if quota is not None and self._active_bytes(row.new.owner, upload_id) + length > quota:
            return None, not (row.expires_at <= now)
        row.length = length
        covered = row.prefix_parts * row.new.part_size >= length
        if covered:
            row.state = State.COMPLETING
        row.completing_since = now if covered else None
        self._slide(row, ttl, now)
        return self._upload(row, now), False

    def _active_bytes(self, owner: Owner, excluding: str) -> int:
        return sum(r.length or 0 for r in self.rows.values()
                   if r.new.owner == owner and r.state is State.ACTIVE and r.new.id != excluding)

    async def active_bytes(self, owner: Owner, excluding: str) -> int:
        await self._yield()
        return self._active_bytes(owner, excluding)

    async def confirm_parts(self, upload_id: str, parts: Sequence[ConfirmedPart], ttl: int,
                            writer_gen: int | None = None) -> ConfirmResult | None:
        """migrations/0001_uploads.sql `confirm_parts`."""
        await self._yield()
        now = self._now()
        row = self.rows.get(upload_id)
        if row is None or (writer_gen is not None and row.writer_gen != writer_gen):
            return None
        if row.state is not State.ACTIVE:
            return ConfirmResult(self._upload(row, now, confirmed_beyond=(), stash=()), False)
        for part in parts:
            if part.number not in row.parts:  # on conflict do nothing
                checksum = part.checksum if part.checksum is not None else row.signed_checksums.get(part.number)
                row.parts[part.number] = replace(part, checksum=checksum)
        next_part = row.prefix_parts
        while next_part + 1 in row.parts:
            next_part += 1
        row.stash = [s for s in row.stash if s.part > next_part]
        total = None if row.length is None else max(1, math.ceil(row.length / row.new.part_size))
        row.prefix_parts = next_part
        if total is not None and next_part >= total:
            row.state = State.COMPLETING
            row.completing_since = now
        self._slide(row, ttl, now)
        return ConfirmResult(self._upload(row, now), row.state is State.COMPLETING)

    async def claim_writer(self, upload_id: str, offset: int, ttl: int, part_size: int | None = None) -> Upload | None:
        await self._yield()
        now = self._now()
        row = self.rows.get(upload_id)
        if (row is None or row.state is not State.ACTIVE or row.expires_at <= now
                or row.prefix_parts * row.new.part_size + sum(s.size for s in row.stash) != offset):
            return None
        if part_size is not None and offset == 0 and row.signed_max_part == 0 and not row.parts:
            row.new = replace(row.new, part_size=part_size)
        row.writer_gen += 1
        row.signed_max_part = row.prefix_parts
        self._slide(row, ttl, now)
        return self._upload(row, now)

    async def add_stash(self, upload_id: str, writer_gen: int, segment: StashSegment, ttl: int) -> Upload | None:
        await self._yield()
        now = self._now()
        row = self.rows.get(upload_id)
        if row is None or row.writer_gen != writer_gen or row.state is not State.ACTIVE:
            return None
        if any(s.seq == segment.seq for s in row.stash):
            raise AssertionError(f"duplicate stash seq {segment.seq}")  # primary key (upload_id, seq)
        self._slide(row, ttl, now)
        row.stash.append(segment)
        return self._upload(row, now)

    async def replace_stash(self, upload_id: str, writer_gen: int, segment: StashSegment) -> bool:
        await self._yield()
        self._now()
        row = self.rows.get(upload_id)
        if row is None or row.writer_gen != writer_gen or row.state is not State.ACTIVE:
            return False
        row.stash = [s for s in row.stash if s.part != segment.part] + [segment]
        return True

    async def claim_stale_completing(self, stale_after: float, limit: int,
                                     upload_id: str | None = None) -> list[Upload]:
        await self._yield()
        now = self._now()
        cutoff = now - timedelta(seconds=stale_after)
        stale = sorted((r for r in self.rows.values()
                        if r.state is State.COMPLETING and r.completing_since is not None
                        and r.completing_since < cutoff and upload_id in (None, r.new.id)),
                       key=lambda r: r.completing_since or now)[:limit]
        for row in stale:
            row.completing_since = now  # the lease
        return [self._upload(row, now) for row in stale]

    async def renew_completion(self, upload_id: str) -> None:
        await self._yield()
        row = self.rows.get(upload_id)
        if row is not None and row.state is State.COMPLETING:
            row.completing_since = self._now()

    async def claim_reconcile(self, upload_id: str, interval: float) -> bool:
        await self._yield()
        now = self._now()
        row = self.rows.get(upload_id)
        if row is None:
            return False
        if row.reconciled_at is not None and row.reconciled_at >= now - timedelta(seconds=interval):
            return False
        row.reconciled_at = now
        return True

    async def confirmed_parts(self, upload_id: str) -> list[ConfirmedPart]:
        await self._yield()
        self._now()
        row = self.rows.get(upload_id)
        return [row.parts[n] for n in sorted(row.parts)] if row else []

    async def finish_completing(self, upload_id: str, state: State, reason: str | None = None) -> None:
        await self._yield()
        now = self._now()
        row = self.rows.get(upload_id)
        if row is None or row.state is not State.COMPLETING:
            return
        row.failure_reason = reason
        self._end(row, state, now)

    async def expire_batch(self, limit: int) -> list[Upload]:
        await self._yield()
        now = self._now()
        due = sorted((r for r in self.rows.values() if r.state is State.ACTIVE and r.expires_at <= now),
                     key=lambda r: r.expires_at)[:limit]
        expired = []
        for row in due:
            row.writer_gen += 1
            self._end(row, State.EXPIRED, now)
            # The statement's select sees the stash rows its own CTE deletes (one snapshot).
            expired.append(self._upload(row, now))
            row.stash = []
        return expired

    async def purge_ended(self, tombstone_days: int, event_days: int, limit: int) -> tuple[int, int]:
        await self._yield()
        now = self._now()
        cutoff = now - timedelta(days=tombstone_days)
        old = [i for i, r in self.rows.items() if r.ended_at is not None and r.ended_at < cutoff][:limit]
        for upload_id in old:
            del self.rows[upload_id]
        return len(old), 0

    async def live_multipart_ids(self, multipart_ids: Sequence[str]) -> set[str]:
        await self._yield()
        self._now()
        wanted = set(multipart_ids)
        return {r.new.multipart_id for r in self.rows.values()
                if r.new.multipart_id in wanted and r.state in (State.ACTIVE, State.COMPLETING)
                and r.new.multipart_id is not None}

    async def reopen(self, upload_id: str, unconfirm: Sequence[int]) -> None:
        await self._yield()
        self._now()
        row = self.rows.get(upload_id)
        if row is None or row.state is not State.COMPLETING:
            return
        row.state = State.ACTIVE
        row.completing_since = None
        row.prefix_parts = min(row.prefix_parts, min(unconfirm, default=10001) - 1)
        for number in unconfirm:
            row.parts.pop(number, None)

    async def ping(self) -> None:
        self._now()


# -- object store -----------------------------------------------------------------------------------


@dataclass
class StoredPart:
    data: bytes
    etag: str
    checksum: str | None
    last_modified: datetime
    hidden_listings: int = 0  # ListParts calls that still do not show this part


@dataclass
class Multipart:
    key: str
    content_type: str
    metadata: dict[str, str]
    checksum: PartChecksum | None
    initiated: datetime
    parts: dict[int, StoredPart] = field(default_factory=dict)


@dataclass
class StoredObject:
    data: bytes
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)


def etag_of(data: bytes) -> str:
    """Depends on the bytes only, like S3's MD5 ETag (crc32 and length: cheaper, enough for tests)."""
    return f'"{zlib.crc32(data):08x}{len(data):016x}"'


_CHECKSUM_HEADERS = {"x-amz-checksum-crc32c": PartChecksum.CRC32C, "x-amz-checksum-sha256": PartChecksum.SHA256}


class MemoryObjectStore:
    """ObjectStore and ByteStore over dicts.

    Fault knobs:
    - `fail(operation, times=None)`: the next `times` calls (None: all) of that method raise
      UploadError(STORAGE_UNAVAILABLE), e.g. `fail("complete")`, `fail("list_parts")`;
    - `lose_complete_responses = n`: the next n completes assemble the object, then raise
      STORAGE_UNAVAILABLE (S3 finished, the answer never arrived);
    - `hide_new_parts = n`: parts uploaded from now on are missing from the next n ListParts calls;
    - `list_checksums = False`: ListParts omits part checksums (SeaweedFS, moto).
    """

    READ_CHUNK = 256 * 1024

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.multipart: dict[str, Multipart] = {}
        self.objects: dict[str, StoredObject] = {}
        self.calls: dict[str, int] = {}
        self.failures: dict[str, int | None] = {}
        self.lose_complete_responses = 0
        self.hide_new_parts = 0
        self.list_checksums = True
        self._ids = itertools.count(1)

    # knobs and helpers

    def fail(self, operation: str, times: int | None = None) -> None:
        self.failures[operation] = times

    def heal(self, operation: str | None = None) -> None:
        if operation is None:
            self.failures.clear()
        else:
            self.failures.pop(operation, None)

    async def _enter(self, operation: str) -> None:
        await asyncio.sleep(0)
        self.calls[operation] = self.calls.get(operation, 0) + 1
        if operation in self.failures:
            left = self.failures[operation]
            if left is not None:
                if left <= 1:
                    del self.failures[operation]
                else:
                    self.failures[operation] = left - 1
            raise storage_unavailable(operation)

    def _multipart(self, key: str, multipart_id: str) -> Multipart | None:
        upload = self.multipart.get(multipart_id)
        return upload if upload is not None and upload.key == key else None

    def _store_part(self, upload: Multipart, number: int, data: bytes, checksum: str | None = None) -> str:
        etag = etag_of(data)
        upload.parts[number] = StoredPart(data, etag, checksum, self.clock.now(), self.hide_new_parts)
        return etag

    @staticmethod
    async def _collect(body: AsyncIterator[bytes], size: int, operation: str) -> bytes:
        chunks = []
        received = 0
        async for chunk in body:
            chunks.append(bytes(chunk))
            received += len(chunk)
            if received > size:
                break
        if received != size:  # S3 refuses a body that does not match Content-Length
            raise storage_unavailable(f"{operation} ({received} of {size} bytes)")
        return b"".join(chunks)

    def object_bytes(self, key: str) -> bytes:
        return self.objects[key].data

    async def put_presigned(self, url: str, data: bytes, headers: Mapping[str, str] | None = None) -> str:
        """The client's PUT of a part to a URL from MemorySigner; returns the ETag, raises like S3 would."""
        target = parse_part_url(url)
        await self._enter("put_presigned")
        if target.expires_at <= self.clock.now():
            raise UploadError(ErrorCode.UNAUTHORIZED, "presigned URL expired")
        if target.size is not None and target.size != len(data):
            raise UploadError(ErrorCode.SIZE_MISMATCH, "Content-Length does not match the signed length")
        sent = {k.lower(): v for k, v in (headers or {}).items()}
        for name, value in target.signed_headers.items():
            if sent.get(name) != value:
                raise UploadError(ErrorCode.UNAUTHORIZED, f"signed header {name} missing or different")
        if "content-md5" in sent and base64.b64decode(sent["content-md5"]) != hashlib.md5(data).digest():
            raise UploadError(ErrorCode.CHECKSUM_MISMATCH, "BadDigest")
        if "x-amz-checksum-sha256" in sent and (
                base64.b64decode(sent["x-amz-checksum-sha256"]) != hashlib.sha256(data).digest()):
            raise UploadError(ErrorCode.CHECKSUM_MISMATCH, "BadDigest")
        upload = self._multipart(target.key, target.multipart_id)
        if upload is None:
            raise UploadError(ErrorCode.NOT_FOUND, "NoSuchUpload")
        # crc32c is not verified here (no crc32c in the standard library); its value is kept.
        checksum = next((v for k, v in sent.items() if k in _CHECKSUM_HEADERS), None)
        return self._store_part(upload, target.number, data, checksum)

    # ObjectStore

    async def create_multipart(self, key: str, *, content_type: str, metadata: dict[str, str],
                               checksum: PartChecksum | None, filename: str | None = None) -> str:
        await self._enter("create_multipart")
        multipart_id = f"mp-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        self.multipart[multipart_id] = Multipart(key, content_type, dict(metadata),
                                                 checksum if checksum and checksum.is_s3_algorithm else None,
                                                 self.clock.now())
        return multipart_id

    async def put_empty(self, key: str, *, content_type: str, metadata: dict[str, str],
                        filename: str | None = None) -> None:
        await self._enter("put_empty")
        self.objects[key] = StoredObject(b"", content_type, dict(metadata))

    async def list_parts(self, key: str, multipart_id: str, marker: int, max_parts: int) -> PartsPage:
        await self._enter("list_parts")
        upload = self._multipart(key, multipart_id)
        if upload is None:
            raise UploadError(ErrorCode.NOT_FOUND, "S3 ListParts: NoSuchUpload")
        visible = []
        for number in sorted(upload.parts):
            part = upload.parts[number]
            if part.hidden_listings > 0:
                part.hidden_listings -= 1
                continue
            if number > marker:
                visible.append((number, part))
        page = visible[:max_parts]
        truncated = len(visible) > max_parts
        listed = [ListedPart(n, len(p.data), p.etag, p.checksum if self.list_checksums else None, p.last_modified)
                  for n, p in page]
        return PartsPage(listed, page[-1][0] if page else 0, truncated)

    async def complete(self, key: str, multipart_id: str, parts: Sequence[ConfirmedPart],
                       checksum: PartChecksum | None) -> None:
        await self._enter("complete")
        upload = self._multipart(key, multipart_id)
        if upload is None:
            raise CompleteRefused("no_such_upload")
        numbers = [p.number for p in parts]
        if not parts or numbers != sorted(set(numbers)):
            raise CompleteRefused("invalid_part")  # InvalidPartOrder / MalformedXML
        for index, part in enumerate(parts):
            stored = upload.parts.get(part.number)
            if stored is None or stored.etag != part.etag:
                raise CompleteRefused("invalid_part")
            if index < len(parts) - 1 and len(stored.data) < S3_MIN_PART_SIZE:
                raise CompleteRefused("invalid_part")  # EntityTooSmall
            # An upload with an x-amz checksum algorithm must name every part's checksum.
            if upload.checksum is not None and (part.checksum is None or part.checksum != stored.checksum):
                raise CompleteRefused("invalid_part")
        data = b"".join(upload.parts[p.number].data for p in parts)
        self.objects[key] = StoredObject(data, upload.content_type, dict(upload.metadata))
        del self.multipart[multipart_id]
        if self.lose_complete_responses > 0:
            self.lose_complete_responses -= 1
            raise storage_unavailable("CompleteMultipartUpload (response lost)")

    async def abort(self, key: str, multipart_id: str) -> None:
        await self._enter("abort")
        if self._multipart(key, multipart_id) is not None:
            del self.multipart[multipart_id]

    async def delete_object(self, key: str) -> None:
        await self._enter("delete_object")
        self.objects.pop(key, None)

    async def head_object(self, key: str) -> ObjectHead | None:
        await self._enter("head_object")
        stored = self.objects.get(key)
        return ObjectHead(len(stored.data), dict(stored.metadata)) if stored else None

    async def delete_objects(self, keys: Sequence[str]) -> None:
        await self._enter("delete_objects")
        for key in keys:
            self.objects.pop(key, None)

    async def upload_part_copy(self, key: str, multipart_id: str, number: int, source_key: str,
                               start: int, end: int) -> str:
        await self._enter("upload_part_copy")
        upload = self._multipart(key, multipart_id)
        source = self.objects.get(source_key)
        if upload is None or source is None or not 0 <= start < end <= len(source.data):
            raise storage_unavailable("UploadPartCopy")
        return self._store_part(upload, number, source.data[start:end])

    async def list_multipart_uploads(self, prefix: str) -> AsyncIterator[MultipartListing]:
        await self._enter("list_multipart_uploads")
        for multipart_id, upload in list(self.multipart.items()):
            if upload.key.startswith(prefix):
                yield MultipartListing(upload.key, multipart_id, upload.initiated)

    async def ping(self) -> None:
        await self._enter("ping")

    # ByteStore

    async def upload_part(self, key: str, multipart_id: str, number: int, size: int,
                          body: AsyncIterator[bytes]) -> str:
        await self._enter("upload_part")
        data = await self._collect(body, size, "UploadPart")
        upload = self._multipart(key, multipart_id)
        if upload is None:
            raise storage_unavailable("UploadPart (NoSuchUpload)")
        return self._store_part(upload, number, data)

    async def put_object(self, key: str, size: int, body: AsyncIterator[bytes]) -> None:
        await self._enter("put_object")
        self.objects[key] = StoredObject(await self._collect(body, size, "PutObject"))

    async def read_object(self, key: str, start: int | None = None, end: int | None = None
                          ) -> AsyncIterator[bytes]:
        await self._enter("read_object")
        stored = self.objects.get(key)
        if stored is None:
            raise storage_unavailable("GetObject (NoSuchKey)")
        data = stored.data[start or 0:end]
        for offset in range(0, len(data), self.READ_CHUNK):
            yield data[offset:offset + self.READ_CHUNK]


# -- signer -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartTarget:
    key: str
    multipart_id: str
    number: int
    size: int | None
    expires_at: datetime
    signed_headers: dict[str, str]


def parse_part_url(url: str) -> PartTarget:
    parts = urlsplit(url)
    assert parts.scheme == "memory", url
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    headers = {k[len("h-"):]: v for k, v in query.items() if k.startswith("h-")}
    return PartTarget(
        key=unquote(parts.path.lstrip("/")), multipart_id=query["uploadId"], number=int(query["partNumber"]),
        size=int(query["size"]) if "size" in query else None,
        expires_at=datetime.fromtimestamp(float(query["expires"]), UTC), signed_headers=headers)


class MemorySigner:
    """PartSigner whose URLs say what they were signed for:
    `memory://bucket/{key}?uploadId=..&partNumber=..&size=..&expires=..&h-{header}=..`."""

    def __init__(self, clock: Clock | None = None, bucket: str = "bucket",
                 credentials_expire: datetime | None = None) -> None:
        self.clock = clock or Clock()
        self.bucket = bucket
        self.credentials_expire = credentials_expire
        self.signed: list[PartTarget] = []

    def sign_parts(self, key: str, multipart_id: str, parts: Sequence[PartToSign], *,
                   expires_in: int) -> list[SignedPart]:
        return [self._sign(key, multipart_id, p.number, p.size, p.checksum_header, expires_in) for p in parts]

    def _sign(self, key: str, multipart_id: str, number: int, size: int | None,
              checksum_header: tuple[str, str] | None, expires_in: int) -> SignedPart:
        expires = (self.clock.now() + timedelta(seconds=expires_in)).timestamp()
        query = [("uploadId", multipart_id), ("partNumber", str(number))]
        if size is not None:
            query.append(("size", str(size)))
        query.append(("expires", repr(expires)))
        client_headers = {}
        if checksum_header is not None:
            name, value = checksum_header
            query.append((f"h-{name.lower()}", value))
            client_headers[name] = value
        url = f"memory://{self.bucket}/{quote(key)}?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query)
        self.signed.append(parse_part_url(url))
        return SignedPart(url, client_headers)

    def sign_download(self, key: str, *, filename: str, content_type: str, expires_in: int) -> str:
        return (f"memory://{self.bucket}/{quote(key)}?download={quote(filename, safe='')}"
                f"&type={quote(content_type, safe='')}&expires_in={expires_in}")

    def credentials_expire_at(self) -> datetime | None:
        return self.credentials_expire


# -- wiring -----------------------------------------------------------------------------------------


SMALL_LIMITS = Limits(
    max_upload_size=1024 * MiB,
    part_size=5 * MiB,
    upload_ttl=3600,
    upload_max_age=7 * 24 * 3600,
    presign_ttl=900,
    download_ttl=300,
    sign_batch_max=20,
    s3_key_prefix="t",
    s3_bucket="bucket",
    complete_timeout=2.0,
    head_reconcile_timeout=1.0,
    reconcile_interval=30.0,
    completion_retry_after=15.0,
    concat_max_partials=100,
    concat_max_streamed=64 * MiB,
    quota=None,
)


@dataclass
class World:
    """The use cases wired like gateway/app.py, over the memory adapters."""
    clock: Clock
    limits: Limits
    repo: MemoryRepository
    store: MemoryObjectStore
    signer: MemorySigner
    completion: Completion
    uploads: UploadService
    proxy: ProxyUploads
    concat: Concatenation
    completion_worker: CompletionWorker
    sweeper: Sweeper

    async def create(self, length: int | None, owner: Owner = ALICE, *, part_size: int | None = None,
                     checksum: PartChecksum | None = None, metadata: Mapping[str, str | None] | None = None,
                     partial: bool = False) -> Upload:
        return await self.uploads.create(owner, length=length, metadata=metadata or {}, part_size_hint=part_size,
                                         part_checksum=checksum, partial=partial)

    async def put_parts(self, upload: Upload, data: bytes, numbers: Sequence[int], owner: Owner = ALICE,
                        *, length: int | None = None) -> dict[int, str]:
        """The direct path by hand: sign the parts, then PUT each one's bytes of `data` (the whole file)
        to its URL. Returns the ETags; nothing is confirmed."""
        signed = await self.uploads.sign(upload.id, owner, [PartRequest(n) for n in numbers], length)
        etags = {}
        for part in signed.parts:
            chunk = data[part.offset:part.offset + part.length]
            etags[part.number] = await self.store.put_presigned(part.url, chunk, part.headers)
        return etags

    async def upload_direct(self, data: bytes, owner: Owner = ALICE, *, part_size: int = 5 * MiB) -> Upload:
        """A whole direct upload: create, sign and PUT every part, confirm them all."""
        upload = await self.create(len(data), owner, part_size=part_size)
        numbers = list(range(1, (upload.part_count or 0) + 1))
        await self.put_parts(upload, data, numbers, owner)
        return await self.uploads.confirm(upload.id, owner, numbers)


def small_limits(**overrides: Any) -> Limits:
    unknown = set(overrides) - {f.name for f in fields(Limits)}
    assert not unknown, f"no such Limits fields: {unknown}"
    return replace(SMALL_LIMITS, **overrides)


def build_world(*, create_hook: CreateHook | None = None, completion_retry_after: float = 30.0,
                credentials_expire: datetime | None = None, orphan_grace: float = 3600.0,
                tombstone_days: int = 7, **limits: Any) -> World:
    clock = Clock()
    settings = small_limits(**limits)
    repo = MemoryRepository(clock)
    store = MemoryObjectStore(clock)
    signer = MemorySigner(clock, settings.s3_bucket, credentials_expire)
    completion = Completion(repo, store, settings)
    worker = CompletionWorker(repo, completion, completion_retry_after)
    sweeper = Sweeper(repo, store, worker, key_prefix=settings.s3_key_prefix, tombstone_days=tombstone_days,
                      orphan_grace=orphan_grace)
    return World(
        clock=clock, limits=settings, repo=repo, store=store, signer=signer, completion=completion,
        uploads=UploadService(repo, store, signer, completion, settings, create_hook),
        proxy=ProxyUploads(repo, store, completion, settings),
        concat=Concatenation(repo, store, store, completion, settings),
        completion_worker=worker, sweeper=sweeper,
    )


class BytesBody:
    """A RequestBody over bytes, read in the sizes the core asks for; `length=None` is a chunked body.
    `interrupt_after` raises BodyInterrupted once that many bytes were handed out (a dropped connection);
    so does every read after `abort()`."""

    def __init__(self, data: bytes, *, sized: bool = True, interrupt_after: int | None = None,
                 chunk: int | None = None) -> None:
        self.data = data
        self.length: int | None = len(data) if sized else None
        self.position = 0
        self.interrupt_after = interrupt_after
        self.chunk = chunk
        self.aborted = asyncio.Event()

    def abort(self) -> None:
        """As RequestBodyStream.abort: every read from now on raises BodyInterrupted."""
        self.aborted.set()

    async def read(self, limit: int) -> bytes:
        await asyncio.sleep(0)
        if self.aborted.is_set():
            raise BodyInterrupted("aborted")
        end = len(self.data) if self.interrupt_after is None else self.interrupt_after
        if self.position >= end and self.interrupt_after is not None:
            raise BodyInterrupted("connection dropped")
        take = min(limit, self.chunk or limit, end - self.position)
        piece = self.data[self.position:self.position + take]
        self.position += len(piece)
        return piece


async def error_of(awaitable: Any) -> UploadError:
    """The UploadError an awaitable raises (fails the test if it raises none)."""
    try:
        await awaitable
    except UploadError as exc:
        return exc
    raise AssertionError("expected an UploadError")


_RANDOM: dict[int, bytes] = {}


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes; other seeds give other bytes. Cut from one buffer per seed,
    since fresh random bytes for every test cost seconds."""
    buffer = _RANDOM.get(seed, b"")
    if len(buffer) < size:
        buffer = _RANDOM[seed] = random.Random(seed).randbytes(max(size, 16 * MiB))
    return buffer[:size]
