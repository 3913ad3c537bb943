"""The one error type of the gateway.

Core code raises UploadError with a code from ErrorCode; `gateway.http.errors` is the single place that
turns a code into an HTTP status (like tusd's error table). Adapters translate their back-end errors into
these codes at their edge.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.Enum):
    # request shape
    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_VERSION = "unsupported_version"
    INVALID_UPLOAD_LENGTH = "invalid_upload_length"
    AMBIGUOUS_UPLOAD_LENGTH = "ambiguous_upload_length"
    INVALID_METADATA = "invalid_metadata"
    INVALID_PART_SIZE = "invalid_part_size"
    INVALID_CHECKSUM_ALGORITHM = "invalid_checksum_algorithm"
    INVALID_CONCAT = "invalid_concat"
    UPLOAD_NOT_FINISHED = "upload_not_finished"
    MODIFY_FINAL = "modify_final"
    INCONSISTENT_LENGTH = "inconsistent_length"
    COMPLETED_UPLOAD = "completed_upload"
    UNKNOWN_PART = "unknown_part"
    BATCH_TOO_LARGE = "batch_too_large"
    CHECKSUM_REQUIRED = "checksum_required"
    INVALID_OFFSET = "invalid_offset"
    INVALID_CONTENT_TYPE = "invalid_content_type"
    REQUEST_TIMEOUT = "request_timeout"
    # auth
    UNAUTHORIZED = "unauthorized"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    IDENTITY_UNAVAILABLE = "identity_unavailable"
    # lookup and lifecycle
    NOT_FOUND = "not_found"
    GONE = "gone"
    UPLOAD_EXPIRED = "upload_expired"
    UPLOAD_FAILED = "upload_failed"
    NOT_READY = "not_ready"
    UPLOAD_COMPLETED = "upload_completed"
    UPLOAD_NOT_ACTIVE = "upload_not_active"
    # limits
    MAX_SIZE_EXCEEDED = "max_size_exceeded"
    REQUEST_TOO_LARGE = "request_too_large"
    QUOTA_EXCEEDED = "quota_exceeded"
    RATE_LIMITED = "rate_limited"
    HOOK_REJECTED = "hook_rejected"
    HOOK_UNAVAILABLE = "hook_unavailable"
    # conflicts
    OFFSET_MISMATCH = "offset_mismatch"
    PART_CONFIRMED = "part_confirmed"
    PART_NOT_VISIBLE = "part_not_visible"
    SIZE_MISMATCH = "size_mismatch"
    LENGTH_ALREADY_SET = "length_already_set"
    LENGTH_CONFLICT = "length_conflict"
    COMPLETING = "completing"
    PATH_CONFLICT = "path_conflict"
    WRITER_PREEMPTED = "writer_preempted"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    UPLOAD_LOCKED = "upload_locked"
    # dependencies
    STORAGE_UNAVAILABLE = "storage_unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"


class UploadError(Exception):
    """A failure the client should hear about, with a stable machine-readable code."""

    def __init__(self, code: ErrorCode, message: str, *, details: dict[str, Any] | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"UploadError({self.code.value!r}, {self.message!r})"
