"""Every port of the core: what the use cases need from the outside world, as small protocols.

gateway.db implements the repository and the event outbox, gateway.s3 the object store, byte
store and signer, gateway.hooks the hooks, gateway.http the request body (docs/architecture.md §1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.core.model import ConfirmedPart, NewUpload, Owner, PartChecksum, StashSegment, State, Upload


@dataclass(frozen=True)
class Quota:
    """Per owner: at most this many active uploads and declared bytes in them."""
    max_uploads: int
    max_bytes: int


@dataclass(frozen=True)
class ConfirmResult:
    upload: Upload
    # True for exactly one caller: the one whose confirm moved the upload to `completing`.
    started_completing: bool


class UploadRepository(Protocol):
    async def insert(self, new: NewUpload, ttl: int, max_age: int) -> Upload | None:
        """The new upload, or None when the owner's quota (the upload's quota_uploads and quota_bytes,
        counted over the owner's active uploads, atomically) is used up."""
        ...

    async def get(self, upload_id: str) -> Upload | None: ...

    async def terminate(self, upload_id: str) -> Upload | None:
        """Move an upload that is not `completing` to `terminated`; None if it is `completing`."""
        ...

    async def record_signed(self, upload_id: str, max_part: int, urls_expire_at: datetime, ttl: int,
                            checksums: Sequence[tuple[int, str]] = ()) -> Upload | None:
        """Note parts signed up to max_part and the x-amz checksums they were signed with;
        None unless the upload is still active."""
        ...

    async def declare_length(self, upload_id: str, length: int, ttl: int) -> tuple[Upload | None, bool]:
        """Set a deferred length once, atomically within the owner's byte quota (`quota_bytes`):
        (upload, False); (None, True) when the quota refuses it; (None, False) when the length was
        already set or the upload is not active."""
        ...

    async def active_bytes(self, owner: Owner, excluding: str) -> int:
        """Bytes declared in the owner's active uploads other than `excluding` (the quota's measure)."""
        ...

    async def confirm_parts(self, upload_id: str, parts: Sequence[ConfirmedPart], ttl: int,
                            writer_gen: int | None = None) -> ConfirmResult | None:
        """Record parts S3 holds, advance the prefix, drop the stash of committed parts, move to
        `completing` when the prefix covers the length. With writer_gen: only while that PATCH is
        still the upload's writer (None otherwise)."""
        ...

    async def claim_writer(self, upload_id: str, offset: int, ttl: int, part_size: int | None = None) -> Upload | None:
        """Make the caller the upload's only writer if the offset still matches; None otherwise. With
        part_size, an upload nothing was written to or signed for yet (offset 0, no part recorded,
        no part ever signed) takes that part size."""
        ...

    async def add_stash(self, upload_id: str, writer_gen: int, segment: StashSegment, ttl: int) -> Upload | None: ...

    async def replace_stash(self, upload_id: str, writer_gen: int, segment: StashSegment) -> bool:
        """Replace all stash segments of segment.part by one (compaction)."""
        ...

    async def claim_stale_completing(self, stale_after: float, limit: int,
                                     upload_id: str | None = None) -> list[Upload]:
        """`completing` uploads (or that one) whose completion lease lapsed `stale_after` seconds ago,
        leased to the caller."""
        ...

    async def renew_completion(self, upload_id: str) -> None:
        """Renew the caller's completion lease while CompleteMultipartUpload runs."""
        ...

    async def claim_reconcile(self, upload_id: str, interval: float) -> bool:
        """True at most once per `interval` seconds per upload, across instances."""
        ...

    async def confirmed_parts(self, upload_id: str) -> list[ConfirmedPart]: ...

    async def finish_completing(self, upload_id: str, state: State, reason: str | None = None) -> None:
        """`completing` -> `completed` or `failed`."""
        ...

    async def expire_batch(self, limit: int) -> list[Upload]:
        """End active uploads past their expiry (claimed with SKIP LOCKED), returning them for cleanup."""
        ...

    async def purge_ended(self, tombstone_days: int, event_days: int, limit: int) -> tuple[int, int]:
        """Delete tombstones and delivered events older than their retention; (uploads, events) deleted."""
        ...

    async def live_multipart_ids(self, multipart_ids: Sequence[str]) -> set[str]:
        """Those of the given S3 multipart upload ids that belong to an active or completing upload."""
        ...

    async def reopen(self, upload_id: str, unconfirm: Sequence[int]) -> None:
        """`completing` -> `active`, dropping parts S3 refused at Complete."""
        ...

    async def ping(self) -> None:
        """Raises unless the database answers (readiness)."""
        ...


@dataclass(frozen=True)
class ListedPart:
    number: int
    size: int
    etag: str
    checksum: str | None
    last_modified: datetime | None = None


@dataclass(frozen=True)
class PartsPage:
    parts: list[ListedPart]
    next_marker: int
    truncated: bool


@dataclass(frozen=True)
class MultipartListing:
    key: str
    multipart_id: str
    initiated: datetime


@dataclass(frozen=True)
class ObjectHead:
    size: int
    metadata: dict[str, str]


class ObjectStore(Protocol):
    async def create_multipart(self, key: str, *, content_type: str, metadata: dict[str, str],
                               checksum: PartChecksum | None, filename: str | None = None) -> str:
        """The multipart upload's id; the final object will carry the type and (sanitized) filename."""
        ...

    async def put_empty(self, key: str, *, content_type: str, metadata: dict[str, str],
                        filename: str | None = None) -> None: ...

    async def list_parts(self, key: str, multipart_id: str, marker: int, max_parts: int) -> PartsPage:
        """Raises UploadError(NOT_FOUND) when the multipart upload is gone (NoSuchUpload)."""
        ...

    async def complete(self, key: str, multipart_id: str, parts: Sequence[ConfirmedPart],
                       checksum: PartChecksum | None) -> None:
        """Raises CompleteRefused for NoSuchUpload / InvalidPart, UploadError for other failures."""
        ...

    async def abort(self, key: str, multipart_id: str) -> None: ...

    async def delete_object(self, key: str) -> None: ...

    async def head_object(self, key: str) -> ObjectHead | None: ...

    async def delete_objects(self, keys: Sequence[str]) -> None: ...

    async def upload_part_copy(self, key: str, multipart_id: str, number: int, source_key: str,
                               start: int, end: int) -> str:
        """Server-side copy of bytes [start, end) of source_key as part `number`; returns the ETag."""
        ...

    def list_multipart_uploads(self, prefix: str) -> AsyncIterator[MultipartListing]:
        """Every in-progress multipart upload under the prefix."""
        ...

    async def ping(self) -> None:
        """Raises unless the bucket answers (readiness)."""
        ...


class ByteStore(Protocol):
    """The data plane of the proxy path: request bodies streamed into S3 with bounded memory."""

    async def upload_part(self, key: str, multipart_id: str, number: int, size: int,
                          body: AsyncIterator[bytes]) -> str:
        """Stream exactly `size` bytes as part `number`; returns the ETag."""
        ...

    async def put_object(self, key: str, size: int, body: AsyncIterator[bytes]) -> None: ...

    def read_object(self, key: str, start: int | None = None, end: int | None = None) -> AsyncIterator[bytes]:
        """The object's bytes, or bytes [start, end) of it."""
        ...

    async def delete_objects(self, keys: Sequence[str]) -> None: ...


class CompleteRefused(Exception):
    """S3 refused CompleteMultipartUpload for a reason the core handles (docs/architecture.md §3.4)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "no_such_upload" | "invalid_part"


@dataclass(frozen=True)
class SignedPart:
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class PartToSign:
    number: int
    size: int | None  # None leaves Content-Length unsigned
    checksum_header: tuple[str, str] | None = None  # (header, base64 digest) S3 must verify


class PartSigner(Protocol):
    def sign_parts(self, key: str, multipart_id: str, parts: Sequence[PartToSign], *,
                   expires_in: int) -> list[SignedPart]:
        """Presigned UploadParts of one upload, in the order asked."""
        ...

    def sign_download(self, key: str, *, filename: str, content_type: str, expires_in: int) -> str: ...

    def credentials_expire_at(self) -> datetime | None:
        """When the signing credentials expire (STS); None for long-lived keys."""
        ...


class CreateHook(Protocol):
    """Asked before an upload is created: may refuse it (UploadError HOOK_REJECTED) or add metadata."""

    async def before_create(self, owner: Owner, length: int | None, metadata: dict[str, str | None],
                            claims: Mapping[str, Any]) -> dict[str, str | None]: ...


class RequestBody(Protocol):
    """A request body as the core sees it; the http layer adapts aiohttp's stream. A body may also have
    `abort()`: the read in progress, and every later one, raises BodyInterrupted (a newer request for
    the upload took over, docs/architecture.md §3.3)."""

    length: int | None

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes, b"" at the end. Raises BodyInterrupted on a drop or idle timeout."""
        ...


class BodyInterrupted(Exception):
    """The client stopped sending: the connection dropped or stayed idle too long."""


@dataclass(frozen=True)
class Event:
    id: int
    upload_id: str
    type: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    acked_urls: tuple[str, ...]


class EventOutbox(Protocol):
    async def claim_events(self, limit: int, lease_seconds: float) -> list[Event]:
        """Undelivered events due now, leased to the caller for lease_seconds."""
        ...

    async def record_delivery(self, event_id: int, acked_urls: Sequence[str], delivered: bool,
                              error: str | None, retry_in: float) -> None: ...

    async def backlog(self) -> int: ...


class WebhookSender(Protocol):
    async def send(self, url: str, event: Event) -> None:
        """Raises on anything but a 2xx answer."""
        ...
