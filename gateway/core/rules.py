"""Rules every use case applies to an owner's upload: who may see it, which states answer what,
and whether a length may be declared (docs/architecture.md §2)."""

from __future__ import annotations

from dataclasses import replace

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.limits import Limits
from gateway.core.model import Allowance, Owner, State, Upload
from gateway.core.ports import Quota, UploadRepository

# Seconds a client waits before retrying while S3 assembles the object.
RETRY_AFTER_COMPLETING = 5


def not_found() -> UploadError:
    return UploadError(ErrorCode.NOT_FOUND, "no such upload")


async def load_owned(repo: UploadRepository, upload_id: str, owner: Owner) -> Upload:
    upload = await repo.get(upload_id)
    # Another owner's upload is indistinguishable from a missing one.
    if upload is None or upload.owner != owner:
        raise not_found()
    return upload


def ensure_alive(upload: Upload) -> None:
    """Terminated, expired and failed uploads are tombstones: 410 for everything but DELETE."""
    if upload.state is State.TERMINATED:
        raise UploadError(ErrorCode.GONE, "the upload was terminated")
    if upload.state is State.EXPIRED or (upload.state is State.ACTIVE and upload.is_expired):
        raise UploadError(ErrorCode.UPLOAD_EXPIRED, "the upload expired")
    if upload.state is State.FAILED:
        raise UploadError(ErrorCode.UPLOAD_FAILED, f"the upload failed: {upload.failure_reason}")


async def load_alive(repo: UploadRepository, upload_id: str, owner: Owner) -> Upload:
    upload = await load_owned(repo, upload_id, owner)
    ensure_alive(upload)
    return upload


async def load_active(repo: UploadRepository, upload_id: str, owner: Owner) -> Upload:
    upload = await load_alive(repo, upload_id, owner)
    if upload.state is not State.ACTIVE:
        raise UploadError(ErrorCode.UPLOAD_COMPLETED, "the upload is complete")
    return upload


def size_limit(limits: Limits, allowance: Allowance) -> int:
    """The largest upload this caller may create: the global limit, or less if its credentials say so."""
    if allowance.max_upload_size is None:
        return limits.max_upload_size
    return min(limits.max_upload_size, allowance.max_upload_size)


def quota_for(limits: Limits, allowance: Allowance) -> Quota | None:
    quota = limits.quota
    if quota is None or allowance.max_active_bytes is None:
        return quota
    return replace(quota, max_bytes=min(quota.max_bytes, allowance.max_active_bytes))


def quota_exceeded(max_bytes: int | None, max_uploads: int | None = None) -> UploadError:
    uploads = f"at most {max_uploads} active uploads and " if max_uploads is not None else ""
    return UploadError(ErrorCode.QUOTA_EXCEEDED,
                       f"{uploads}{max_bytes} declared bytes per owner; finish or delete some uploads first")


async def quota_headroom(repo: UploadRepository, upload: Upload) -> int | None:
    """Bytes a deferred upload may still take before its owner's byte quota is full (None: no quota).
    The declaration itself is checked atomically; this bounds what is written before it."""
    if upload.quota_bytes is None or upload.length is not None:
        return None
    return max(0, upload.quota_bytes - await repo.active_bytes(upload.owner, upload.id))


def offset_mismatch(upload: Upload) -> UploadError:
    return UploadError(ErrorCode.OFFSET_MISMATCH, f"Upload-Offset must be {upload.offset}",
                       details={"offset": upload.offset})


def planned_with_length(upload: Upload, length: int | None, max_upload_size: int) -> Upload:
    """The upload as it will be once `length` is declared; raises if the declaration is refused.
    Nothing is written, so a request can be checked whole before it changes anything."""
    if length is None or upload.length == length:
        return upload
    if upload.length is not None:
        raise UploadError(ErrorCode.LENGTH_ALREADY_SET, "the upload length is already known")
    ceiling = min(max_upload_size, upload.max_length)
    if length > ceiling:
        raise UploadError(ErrorCode.MAX_SIZE_EXCEEDED, f"length exceeds the maximum of {ceiling} bytes")
    if length < upload.offset:
        raise UploadError(ErrorCode.LENGTH_CONFLICT, "length is smaller than the confirmed offset")
    # Every confirmed part must still fit the plan (all are full-size until the length is known).
    confirmed_ends = [n * upload.part_size for n in upload.confirmed_beyond_prefix]
    if any(end > length for end in confirmed_ends):
        raise UploadError(ErrorCode.LENGTH_CONFLICT, "confirmed parts lie past that length")
    return replace(upload, length=length)
