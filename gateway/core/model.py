"""The upload model: states, owners, ids and the fixed part plan (docs/architecture.md §2)."""

from __future__ import annotations

import base64
import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PART_SIZE = 5 * GiB
S3_MAX_PARTS = 10_000
LARGE_FILE = 1 * GiB
LARGE_FILE_PART_SIZE = 64 * MiB

# Shard number reserved at the front of every id so Postgres can be split later (docs/architecture.md §2).
SHARD_PREFIX = "00"


class State(enum.Enum):
    ACTIVE = "active"
    COMPLETING = "completing"
    COMPLETED = "completed"
    TERMINATED = "terminated"
    EXPIRED = "expired"
    FAILED = "failed"


class PartChecksum(enum.Enum):
    MD5 = "md5"
    CRC32C = "crc32c"
    SHA256 = "sha256"

    @property
    def is_s3_algorithm(self) -> bool:
        """crc32c and sha256 are x-amz-checksum algorithms fixed at CreateMultipartUpload."""
        return self is not PartChecksum.MD5

    @property
    def digest_size(self) -> int:
        return {PartChecksum.MD5: 16, PartChecksum.CRC32C: 4, PartChecksum.SHA256: 32}[self]


@dataclass(frozen=True)
class Owner:
    issuer: str
    subject: str


@dataclass(frozen=True)
class Allowance:
    """What the caller's credentials allow, on top of the global limits and only ever below them
    (e.g. from token claims), and the claims a pre-create hook may look at."""
    max_upload_size: int | None = None
    max_active_bytes: int | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)


NO_ALLOWANCE = Allowance()


def new_upload_id() -> str:
    """>= 128 random bits, URL-safe, behind the shard prefix."""
    return SHARD_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()


def object_key(prefix: str, upload_id: str) -> str:
    """`{prefix}/{random leading characters}/{id}`: spreads keys over S3 prefixes, never uses the filename."""
    spread = upload_id[len(SHARD_PREFIX):len(SHARD_PREFIX) + 2]
    return "/".join(p for p in (prefix, spread, upload_id) if p)


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def parts_needed(length: int, part_size: int) -> int:
    return -(-length // part_size)


def plan_part_size(length: int | None, configured: int, hint: int | None) -> int:
    """Fixed for the upload's life: every part but the last has this size (docs/architecture.md §2)."""
    size = hint if hint is not None else configured
    if hint is None and (length is None or length > LARGE_FILE):
        size = max(size, LARGE_FILE_PART_SIZE)
    if length is not None:
        size = max(size, _round_up(parts_needed(length, S3_MAX_PARTS), MiB))
    return max(S3_MIN_PART_SIZE, min(size, S3_MAX_PART_SIZE))


def proxy_part_size(length: int, planned: int, buffer: int) -> int | None:
    """The part size for a known-length upload whose first bytes come through the proxy path, when it
    is smaller than the planned one: parts no bigger than the proxy buffer are held whole in memory, so
    a drop loses nothing and no byte goes to S3 twice (docs/architecture.md §2, §3.3). None: keep it."""
    size = max(S3_MIN_PART_SIZE, buffer - buffer % MiB, _round_up(parts_needed(length, S3_MAX_PARTS), MiB))
    return size if size < planned else None


@dataclass(frozen=True)
class ConfirmedPart:
    number: int
    size: int
    etag: str
    checksum: str | None = None


@dataclass(frozen=True)
class StashSegment:
    """Bytes of the next part that a PATCH received but could not yet put into a whole part."""
    part: int
    seq: int
    key: str
    size: int


@dataclass(frozen=True, kw_only=True)
class NewUpload:
    """What creation decides about an upload; the repository adds the rest when it stores it."""
    id: str
    owner: Owner
    length: int | None
    part_size: int
    part_checksum: PartChecksum | None
    # Ordered as the client sent it; each wire protocol renders it in its own format.
    metadata: dict[str, str | None]
    bucket: str
    key: str
    multipart_id: str | None
    state: State
    concat: str | None = None  # "partial" or "final" (tus concatenation)
    # A final upload's partial uploads, in order (ids; URLs are rendered at the edge).
    concat_partials: tuple[str, ...] = ()
    # The most bytes this upload may hold, fixed at creation (None: only the part plan bounds it).
    size_limit: int | None = None
    # The owner's quota at creation, in bytes and active uploads; a length declared later must fit it
    # (None: no quota).
    quota_bytes: int | None = None
    quota_uploads: int | None = None


@dataclass(frozen=True, kw_only=True)
class Upload(NewUpload):
    prefix_parts: int
    expires_at: datetime
    is_expired: bool
    signed_max_part: int = 0
    needs_reconcile: bool = False
    confirmed_beyond_prefix: tuple[int, ...] = field(default=())
    failure_reason: str | None = None
    # Signed URLs for parts past the prefix that can still be used (the direct path is in flight).
    signed_parts_live: bool = False
    writer_gen: int = 0
    stash: tuple[StashSegment, ...] = field(default=())

    @property
    def stash_bytes(self) -> int:
        return sum(segment.size for segment in self.stash)

    @property
    def part_count(self) -> int | None:
        if self.length is None:
            return None
        return max(1, parts_needed(self.length, self.part_size))

    @property
    def max_length(self) -> int:
        planned = self.part_size * S3_MAX_PARTS
        return planned if self.size_limit is None else min(planned, self.size_limit)

    @property
    def offset(self) -> int:
        """Bytes of the longest prefix of parts S3 is known to hold, plus the stashed bytes of the next."""
        if self.state in (State.COMPLETING, State.COMPLETED):
            return self.length or 0
        done = self.prefix_parts * self.part_size + self.stash_bytes
        return done if self.length is None else min(done, self.length)

    def part_range(self, number: int) -> tuple[int, int]:
        """(offset, size) of part `number`; a deferred upload's parts are all full-size."""
        start = (number - 1) * self.part_size
        if self.length is None:
            return start, self.part_size
        return start, min(self.part_size, self.length - start)

    @property
    def limit(self) -> int:
        """No byte may be written at or past this offset."""
        return self.length if self.length is not None else self.max_length

    def is_confirmed(self, number: int) -> bool:
        return number <= self.prefix_parts or number in self.confirmed_beyond_prefix

    def valid_part_number(self, number: int) -> bool:
        count = self.part_count
        return 1 <= number <= (count if count is not None else parts_needed(self.max_length, self.part_size))
