"""tus 1.0.0 (core, creation, creation-with-upload, creation-defer-length, expiration, checksum,
termination, concatenation, and the gateway's presigned-parts extension): headers in, the core
called, headers out (docs/architecture.md §4.1). Each request path reads top-down in this module."""

from __future__ import annotations

import base64
import binascii
import logging
import re

from aiohttp import web
from yarl import URL

from gateway.core.checksums import ALGORITHMS
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import S3_MAX_PART_SIZE, S3_MIN_PART_SIZE, PartChecksum, Upload
from gateway.core.proxy import ExpectedChecksum
from gateway.http.common import (
    DIGITS,
    UPLOAD_ID,
    RequestBodyStream,
    allowance_of,
    http_date,
    owner_of,
    parse_non_negative,
    upload_id_of,
    upload_url,
)
from gateway.http.keys import CONCAT, PROXY, SERVICE, SETTINGS

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = ("creation,creation-with-upload,creation-defer-length,expiration,checksum,termination,"
                  "concatenation,presigned-parts")
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
MAX_METADATA_HEADER = 4096
_METADATA_KEY = re.compile(r"^[\x21-\x7e]+$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


# -- headers ----------------------------------------------------------------------------------------


def parse_metadata(header: str | None) -> dict[str, str | None]:
    """`Upload-Metadata`, strictly: `key base64value` pairs, standard base64, no duplicate keys.
    The core then applies its own limits to the mapping (count, size, characters)."""
    if header is None or header.strip() == "":
        return {}
    if len(header.encode("latin-1", "replace")) > MAX_METADATA_HEADER:
        raise _invalid_metadata(f"Upload-Metadata is longer than {MAX_METADATA_HEADER} bytes")
    result: dict[str, str | None] = {}
    for item in header.split(","):
        pieces = item.strip().split(" ")
        if len(pieces) > 2 or not pieces[0]:
            raise _invalid_metadata("each Upload-Metadata pair is 'key base64value' separated by one space")
        key = pieces[0]
        if not _METADATA_KEY.match(key):
            raise _invalid_metadata(f"metadata key {key[:40]!r} must be printable ASCII without spaces or commas")
        if key in result:
            raise _invalid_metadata(f"metadata key {key!r} appears twice")
        value = None
        if len(pieces) == 2:
            encoded = pieces[1]
            if len(encoded) % 4 or not _BASE64.match(encoded):
                raise _invalid_metadata(f"metadata value of {key!r} is not standard base64")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise _invalid_metadata(f"metadata value of {key!r} is not standard base64") from None
            value = raw.decode("utf-8", "replace")  # bytes-as-decoded text, UTF-8 where possible
        result[key] = value
    return result


def encode_metadata(metadata: dict[str, str | None]) -> str:
    """The canonical `Upload-Metadata` value: what HEAD echoes, so a client's odd spelling never
    reaches a response header."""
    return ",".join(
        key if value is None else f"{key} {base64.b64encode(value.encode()).decode()}"
        for key, value in metadata.items()
    )


def _invalid_metadata(message: str) -> UploadError:
    return UploadError(ErrorCode.INVALID_METADATA, message)


def _parse_part_size_hint(request: web.Request) -> int | None:
    raw = request.headers.get("Upload-Part-Size")
    if raw is None:
        return None
    if not DIGITS.match(raw.strip()):
        raise UploadError(ErrorCode.INVALID_PART_SIZE, "Upload-Part-Size must be a number of bytes")
    value = int(raw)
    if not S3_MIN_PART_SIZE <= value <= S3_MAX_PART_SIZE:
        raise UploadError(ErrorCode.INVALID_PART_SIZE,
                          f"Upload-Part-Size must be between {S3_MIN_PART_SIZE} and {S3_MAX_PART_SIZE}")
    return value


def _parse_part_checksum(request: web.Request) -> PartChecksum | None:
    raw = request.headers.get("Upload-Part-Checksum")
    if raw is None:
        return None
    try:
        return PartChecksum(raw.strip().lower())
    except ValueError:
        raise UploadError(ErrorCode.INVALID_CHECKSUM_ALGORITHM,
                          "Upload-Part-Checksum must be one of md5, crc32c, sha256") from None


def _parse_upload_checksum(request: web.Request) -> ExpectedChecksum | None:
    raw = request.headers.get("Upload-Checksum")
    if raw is None:
        return None
    algorithm, _, encoded = raw.strip().partition(" ")
    if algorithm not in ALGORITHMS:
        raise UploadError(ErrorCode.INVALID_CHECKSUM_ALGORITHM,
                          f"Upload-Checksum algorithm must be one of {', '.join(ALGORITHMS)}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(ErrorCode.INVALID_REQUEST, "Upload-Checksum value is not base64") from None
    return ExpectedChecksum(algorithm, digest)


def _upload_id_in(request: web.Request, url: str) -> str:
    """The id in an upload URL (absolute or relative) under this gateway's base path."""
    base = request.app[SETTINGS].base_path + "/"
    path = URL(url).path
    upload_id = path[len(base):] if path.startswith(base) else ""
    if not UPLOAD_ID.match(upload_id):
        raise UploadError(ErrorCode.INVALID_CONCAT, f"not an upload URL of this server: {url[:200]}")
    return upload_id


def upload_headers(request: web.Request, upload: Upload) -> dict[str, str]:
    """What HEAD and creation say about an upload."""
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Part-Size": str(upload.part_size),
        "Upload-Expires": http_date(upload.expires_at),
    }
    if upload.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.length)
    if upload.metadata:
        headers["Upload-Metadata"] = encode_metadata(upload.metadata)
    if upload.part_checksum:
        headers["Upload-Part-Checksum"] = upload.part_checksum.value
    if upload.concat == "final":
        headers["Upload-Concat"] = "final;" + " ".join(upload_url(request, i) for i in upload.concat_partials)
    elif upload.concat:
        headers["Upload-Concat"] = upload.concat
    return headers


def _progress_headers(upload: Upload) -> dict[str, str]:
    return {"Upload-Offset": str(upload.offset),
            "Upload-Expires": http_date(upload.expires_at)}


def _has_upload_body(request: web.Request) -> bool:
    """creation-with-upload: a POST whose body is the upload's first bytes."""
    if request.content_type != OFFSET_OCTET_STREAM:
        return False  # clients that force a default Content-Type send no data (as tusd treats them)
    return request.content_length != 0


# -- handlers ---------------------------------------------------------------------------------------


async def options(request: web.Request) -> web.Response:
    """Discovery and CORS preflight; never 412."""
    settings = request.app[SETTINGS]
    return web.Response(status=204, headers={
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(settings.max_upload_size),
        "Tus-Checksum-Algorithm": ",".join(ALGORITHMS),
    })


async def create(request: web.Request) -> web.Response:
    concat = request.headers.get("Upload-Concat", "").strip()
    if concat.startswith("final;"):
        return await _create_final(request, concat)
    if concat not in ("", "partial"):
        raise UploadError(ErrorCode.INVALID_CONCAT, "Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    length = parse_non_negative(request, "Upload-Length")
    defer = request.headers.get("Upload-Defer-Length")
    if defer is not None and defer.strip() != "1":
        raise UploadError(ErrorCode.INVALID_UPLOAD_LENGTH, "Upload-Defer-Length must be 1")
    if length is not None and defer is not None:
        raise UploadError(ErrorCode.AMBIGUOUS_UPLOAD_LENGTH, "send Upload-Length or Upload-Defer-Length, not both")
    if length is None and defer is None:
        raise UploadError(ErrorCode.INVALID_UPLOAD_LENGTH, "Upload-Length or Upload-Defer-Length: 1 is required")
    with_body = _has_upload_body(request)
    body_checksum = _parse_upload_checksum(request) if with_body else None  # refused before creating
    upload = await request.app[SERVICE].create(
        owner_of(request), length=length, metadata=parse_metadata(request.headers.get("Upload-Metadata")),
        part_size_hint=_parse_part_size_hint(request), part_checksum=_parse_part_checksum(request),
        partial=concat == "partial", allowance=allowance_of(request))
    if with_body and upload.length != 0:
        # The created upload keeps whatever bytes arrive; a failure here still answers 201 (the offset says it).
        try:
            upload = await request.app[PROXY].patch(upload.id, upload.owner, 0, RequestBodyStream(request),
                                                    checksum=body_checksum)
        except UploadError as exc:
            log.info("creation-with-upload of %s kept no data: %s", upload.id, exc)
    return _created(request, upload)


async def _create_final(request: web.Request, concat: str) -> web.Response:
    """`Upload-Concat: final;<url> <url>`: assembled in S3 from the caller's finished partial uploads."""
    if "Upload-Length" in request.headers or "Upload-Defer-Length" in request.headers:
        raise UploadError(ErrorCode.INVALID_CONCAT, "a final upload takes its length from its partial uploads")
    partial_ids = [_upload_id_in(request, url) for url in concat[len("final;"):].split()]
    upload = await request.app[CONCAT].create_final(owner_of(request), partial_ids,
                                                    parse_metadata(request.headers.get("Upload-Metadata")),
                                                    allowance_of(request))
    return _created(request, upload)


def _created(request: web.Request, upload: Upload) -> web.Response:
    headers = upload_headers(request, upload)
    headers["Location"] = upload_url(request, upload.id)
    return web.Response(status=201, headers=headers)


async def head(request: web.Request) -> web.Response:
    upload_id, owner = upload_id_of(request), owner_of(request)
    # A client resuming after a drop: this process's PATCH of the upload saves what it holds first, so
    # the offset includes it (docs/architecture.md §3.3).
    await request.app[PROXY].release(upload_id, owner)
    upload = await request.app[SERVICE].status(upload_id, owner)
    headers = upload_headers(request, upload)
    headers["Cache-Control"] = "no-store"
    return web.Response(status=200, headers=headers)


async def patch(request: web.Request) -> web.Response:
    """The proxy path: the body streams into the upload's S3 parts."""
    if request.content_type != OFFSET_OCTET_STREAM:
        raise UploadError(ErrorCode.INVALID_CONTENT_TYPE, f"PATCH needs Content-Type: {OFFSET_OCTET_STREAM}")
    offset = parse_non_negative(request, "Upload-Offset")
    if offset is None:
        raise UploadError(ErrorCode.INVALID_OFFSET, "Upload-Offset is required")
    upload = await request.app[PROXY].patch(
        upload_id_of(request), owner_of(request), offset, RequestBodyStream(request),
        declared_length=parse_non_negative(request, "Upload-Length"), checksum=_parse_upload_checksum(request))
    return web.Response(status=204, headers=_progress_headers(upload))


async def delete(request: web.Request) -> web.Response:
    await request.app[SERVICE].terminate(upload_id_of(request), owner_of(request))
    return web.Response(status=204)


async def download(request: web.Request) -> web.Response:
    result = await request.app[SERVICE].download(upload_id_of(request), owner_of(request))
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"url": result.url, "expires_at": result.expires_at.isoformat()},
                                 headers={"Cache-Control": "no-store"})
    return web.Response(status=302, headers={"Location": result.url, "Cache-Control": "no-store"})
