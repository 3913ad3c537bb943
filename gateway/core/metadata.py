"""An upload's metadata as the core keeps it: an ordered mapping of key to text (or None), whatever
protocol brought it (docs/architecture.md §3.1), and the values derived from it for S3 and downloads.

Keys are printable ASCII without space or comma (they travel in HTTP headers); at most 32 keys and
4 KiB of keys and values. Each wire protocol parses its own format into this mapping.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from gateway.core.errors import ErrorCode, UploadError

MAX_KEYS = 32
MAX_BYTES = 4096
_KEY = re.compile(r"^[\x21-\x2b\x2d-\x7e]+$")

# Metadata copied to S3 user metadata; everything else stays in Postgres only.
S3_METADATA_KEYS = ("filename", "filetype")
# Object Content-Types the bucket may serve; anything else is application/octet-stream (stored XSS).
SAFE_CONTENT_TYPES = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/heic",
    "video/mp4", "video/quicktime", "video/webm", "audio/mpeg", "audio/mp4", "audio/ogg", "audio/wav",
    "application/pdf", "application/zip", "application/gzip", "application/x-tar", "text/plain", "text/csv",
    "application/json", "application/octet-stream",
})


def _invalid(message: str) -> UploadError:
    return UploadError(ErrorCode.INVALID_METADATA, message)


def validate_metadata(metadata: Mapping[str, str | None]) -> dict[str, str | None]:
    """The metadata an upload may keep, in the client's order; raises INVALID_METADATA otherwise.
    Every protocol's metadata (and what a pre-create hook adds) passes through here."""
    if len(metadata) > MAX_KEYS:
        raise _invalid(f"at most {MAX_KEYS} metadata keys")
    size = 0
    for key, value in metadata.items():
        if not _KEY.match(key):
            raise _invalid(f"metadata key {key[:40]!r} must be printable ASCII without spaces or commas")
        if value is not None and "\x00" in value:  # cannot be stored (Postgres text), no place in a name
            raise _invalid(f"metadata value of {key!r} contains a NUL character")
        size += len(key) + len((value or "").encode())
    if size > MAX_BYTES:
        raise _invalid(f"metadata is larger than {MAX_BYTES} bytes")
    return dict(metadata)


def _ascii_text(value: str | None, limit: int = 512) -> str | None:
    """Printable ASCII only: S3 user metadata travels in HTTP headers."""
    if not value:
        return None
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    cleaned = "".join(ch if 0x20 <= ord(ch) < 0x7F else "_" for ch in folded).strip()
    return cleaned[:limit] or None


def object_metadata(upload_id: str, metadata: Mapping[str, str | None]) -> dict[str, str]:
    """The S3 user metadata of an upload's object: its upload id (how a lost completion is recognised)
    and the client's metadata S3 keeps."""
    return {"upload-id": upload_id, **s3_user_metadata(metadata)}


def s3_user_metadata(metadata: Mapping[str, str | None]) -> dict[str, str]:
    result = {}
    for key in S3_METADATA_KEYS:
        value = metadata.get(key)
        # The name without any path a client sent, as downloads serve it.
        text = _ascii_text(filename(metadata) if key == "filename" and value else value)
        if text:
            result[key] = text
    return result


def content_type(metadata: Mapping[str, str | None]) -> str:
    declared = (metadata.get("filetype") or metadata.get("contentType") or "").split(";")[0].strip().lower()
    return declared if declared in SAFE_CONTENT_TYPES else "application/octet-stream"


def filename(metadata: Mapping[str, str | None]) -> str:
    """A filename safe to put into Content-Disposition: no path, no control characters."""
    name = metadata.get("filename") or metadata.get("name") or ""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    return name[:255] or "download"
