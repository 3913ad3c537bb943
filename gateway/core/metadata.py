"""tus `Upload-Metadata`, parsed strictly at creation (DESIGN §3.1).

Keys are printable ASCII without space or comma, values strict standard base64; at most 32 keys and
4 KiB. The canonical re-encoding is what HEAD echoes, so a client's odd spelling never reaches a
response header. Values stay bytes-as-decoded text (UTF-8 where possible).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

from gateway.core.errors import ErrorCode, UploadError

MAX_KEYS = 32
MAX_HEADER_BYTES = 4096
_KEY = re.compile(r"^[\x21-\x7e]+$")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")

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


def parse_metadata(header: str | None) -> dict[str, str | None]:
    if header is None or header.strip() == "":
        return {}
    if len(header.encode("latin-1", "replace")) > MAX_HEADER_BYTES:
        raise _invalid(f"Upload-Metadata is longer than {MAX_HEADER_BYTES} bytes")
    result: dict[str, str | None] = {}
    for item in header.split(","):
        pieces = item.strip().split(" ")
        if len(pieces) > 2 or not pieces[0]:
            raise _invalid("each Upload-Metadata pair is 'key base64value' separated by one space")
        key = pieces[0]
        if not _KEY.match(key):
            raise _invalid(f"metadata key {key[:40]!r} must be printable ASCII without spaces or commas")
        if key in result:
            raise _invalid(f"metadata key {key!r} appears twice")
        value = None
        if len(pieces) == 2:
            encoded = pieces[1]
            if len(encoded) % 4 or not _B64.match(encoded):
                raise _invalid(f"metadata value of {key!r} is not standard base64")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise _invalid(f"metadata value of {key!r} is not standard base64") from None
            value = raw.decode("utf-8", "replace")
            if "\x00" in value:  # cannot be stored (Postgres text) and has no place in a name or type
                raise _invalid(f"metadata value of {key!r} contains a NUL character")
        result[key] = value
        if len(result) > MAX_KEYS:
            raise _invalid(f"at most {MAX_KEYS} metadata keys")
    return result


def encode_metadata(metadata: dict[str, str | None]) -> str:
    """The canonical `Upload-Metadata` header value."""
    return ",".join(
        key if value is None else f"{key} {base64.b64encode(value.encode()).decode()}"
        for key, value in metadata.items()
    )


def _ascii_text(value: str | None, limit: int = 512) -> str | None:
    """Printable ASCII only: S3 user metadata travels in HTTP headers."""
    if not value:
        return None
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    cleaned = "".join(ch if 0x20 <= ord(ch) < 0x7F else "_" for ch in folded).strip()
    return cleaned[:limit] or None


def s3_user_metadata(metadata: dict[str, str | None]) -> dict[str, str]:
    result = {}
    for key in S3_METADATA_KEYS:
        text = _ascii_text(metadata.get(key))
        if text:
            result[key] = text
    return result


def content_type(metadata: dict[str, str | None]) -> str:
    declared = (metadata.get("filetype") or metadata.get("contentType") or "").split(";")[0].strip().lower()
    return declared if declared in SAFE_CONTENT_TYPES else "application/octet-stream"


def filename(metadata: dict[str, str | None]) -> str:
    """A filename safe to put into Content-Disposition: no path, no control characters."""
    name = metadata.get("filename") or metadata.get("name") or ""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    return name[:255] or "download"
