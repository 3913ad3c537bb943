"""tus 1.0.0 handlers on the upload collection and on one upload: parse headers, call the core, format."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.utils import format_datetime

from aiohttp import web
from yarl import URL

from gateway.core.checksums import ALGORITHMS
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import S3_MAX_PART_SIZE, S3_MIN_PART_SIZE, PartChecksum, Upload
from gateway.http.common import DIGITS, UPLOAD_ID, owner_of, parse_non_negative, upload_url
from gateway.http.keys import CONCAT, SERVICE, SETTINGS
from gateway.http.patch import has_upload_body, parse_upload_checksum, upload_during_creation

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = ("creation,creation-with-upload,creation-defer-length,expiration,checksum,termination,"
                  "concatenation,presigned-parts")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def upload_headers(upload: Upload) -> dict[str, str]:
    """What HEAD and other responses say about an upload."""
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Part-Size": str(upload.part_size),
        "Upload-Expires": format_datetime(upload.expires_at, usegmt=True),
    }
    if upload.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.length)
    if upload.metadata_header:
        headers["Upload-Metadata"] = upload.metadata_header
    if upload.part_checksum:
        headers["Upload-Part-Checksum"] = upload.part_checksum.value
    if upload.concat:
        headers["Upload-Concat"] = upload.concat_header or upload.concat
    return headers


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
    body_checksum = parse_upload_checksum(request) if has_upload_body(request) else None  # refuse before creating
    upload = await request.app[SERVICE].create(
        owner_of(request), length=length, metadata_header=request.headers.get("Upload-Metadata"),
        part_size_hint=_parse_part_size_hint(request), part_checksum=_parse_part_checksum(request),
        partial=concat == "partial")
    if has_upload_body(request) and upload.length != 0:
        upload = await upload_during_creation(request, upload, body_checksum)
    return _created(request, upload)


def _created(request: web.Request, upload: Upload) -> web.Response:
    headers = upload_headers(upload)
    headers["Location"] = upload_url(request, upload.id)
    return web.Response(status=201, headers=headers)


async def _create_final(request: web.Request, concat: str) -> web.Response:
    """`Upload-Concat: final;<url> <url>`: assembled in S3 from the caller's finished partial uploads."""
    if "Upload-Length" in request.headers or "Upload-Defer-Length" in request.headers:
        raise UploadError(ErrorCode.INVALID_CONCAT, "a final upload takes its length from its partial uploads")
    partial_ids = [_upload_id_of(request, url) for url in concat[len("final;"):].split()]
    echo = "final;" + " ".join(upload_url(request, upload_id) for upload_id in partial_ids)
    upload = await request.app[CONCAT].create_final(owner_of(request), partial_ids, echo,
                                                    request.headers.get("Upload-Metadata"))
    return _created(request, upload)


def _upload_id_of(request: web.Request, url: str) -> str:
    """The id in an upload URL (absolute or relative) under this gateway's base path."""
    base = request.app[SETTINGS].base_path + "/"
    path = URL(url).path
    upload_id = path[len(base):] if path.startswith(base) else ""
    if not UPLOAD_ID.match(upload_id):
        raise UploadError(ErrorCode.INVALID_CONCAT, f"not an upload URL of this server: {url[:200]}")
    return upload_id


async def head(request: web.Request) -> web.Response:
    upload = await request.app[SERVICE].status(request.match_info["upload_id"], owner_of(request))
    headers = upload_headers(upload)
    headers["Cache-Control"] = "no-store"
    return web.Response(status=200, headers=headers)


async def delete(request: web.Request) -> web.Response:
    await request.app[SERVICE].terminate(request.match_info["upload_id"], owner_of(request))
    return web.Response(status=204)


async def download(request: web.Request) -> web.Response:
    result = await request.app[SERVICE].download(request.match_info["upload_id"], owner_of(request))
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"url": result.url, "expires_at": result.expires_at.isoformat()},
                                 headers={"Cache-Control": "no-store"})
    return web.Response(status=302, headers={"Location": result.url, "Cache-Control": "no-store"})


def method_override(handlers: dict[str, Handler]) -> Handler:
    """POST with X-HTTP-Method-Override is the named method (tus MUST), for clients that cannot send it."""

    async def dispatch(request: web.Request) -> web.StreamResponse:
        method = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
        handler = handlers.get(method)
        if handler is None:
            raise web.HTTPMethodNotAllowed(request.method, sorted(handlers))
        return await handler(request.clone(method=method))

    return dispatch
