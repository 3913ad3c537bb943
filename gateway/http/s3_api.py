"""S3-shaped routes for Uppy 6's `@uppy/aws-s3` with `signRequest` (docs/architecture.md §4.5).

Uppy 6 sends every S3 request itself to the URL its app's `signRequest` returns, with the headers
returned beside it, and parses S3's XML answers. `uppySignRequest` (clients/js) returns, for each
request: a presigned S3 URL for UploadPart (the bytes go straight to S3; nothing else is sent there),
and for the control-plane requests a URL on these routes plus the app's bearer token as a header, so
the gateway's own auth, quotas, offsets and exactly-once completion hold. Errors keep the gateway's
JSON format (Uppy reports the status). Uploads are the Companion routes' uploads: deferred length,
5 MiB parts (Uppy's chunk size for files up to ~48.8 GiB), the length follows from the parts at
complete; the key Uppy proposes names the file (its last path segment, Uppy's `{uuid}-` prefix
dropped), the object key is the gateway's.

    POST   /files/s3?uploads&key=K      CreateMultipartUpload -> InitiateMultipartUploadResult
    POST   /files/{id}/s3/urls          {"parts": [n, ...]} -> {"expires_in", "urls": {"n": url}}
    GET    /files/{id}/s3               ListParts -> ListPartsResult (what S3 holds)
    POST   /files/{id}/s3               CompleteMultipartUpload -> CompleteMultipartUploadResult
    DELETE /files/{id}/s3               AbortMultipartUpload -> 204
    PUT    /files/{id}                  PutObject: the whole file as the body (the proxy path)
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from aiohttp import web

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import S3_MAX_PARTS, State, Upload
from gateway.core.uploads import PartRequest
from gateway.http.common import (
    RequestBodyStream,
    allowance_of,
    owner_of,
    read_json_object,
    read_small_body,
    upload_id_of,
    upload_url,
)
from gateway.http.companion import MAX_COMPLETE_BODY, UPPY_PART_SIZE
from gateway.http.keys import PROXY, SERVICE

XML = "application/xml"
_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# Uppy's default object key: `${crypto.randomUUID()}-${file.name}`.
_UUID_PREFIX = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-(?=.)", re.IGNORECASE)
MAX_URLS_BODY = 16 * 1024
_ETAG_ENTITIES = {'"': "&quot;"}


def _bad(message: str) -> UploadError:
    return UploadError(ErrorCode.INVALID_REQUEST, message)


def _xml(root: str, fields: list[tuple[str, str]], extra: str = "") -> web.Response:
    inner = "".join(f"<{name}>{escape(value, _ETAG_ENTITIES)}</{name}>" for name, value in fields)
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{_S3_NS}">{inner}{extra}</{root}>'
    return web.Response(text=body, content_type=XML, headers={"Cache-Control": "no-store"})


def filename_of(key: str) -> str:
    """The file name in the key Uppy proposes: its last path segment without Uppy's `{uuid}-` prefix."""
    name = key.rsplit("/", 1)[-1]
    return _UUID_PREFIX.sub("", name) or name


async def create(request: web.Request) -> web.Response:
    key = request.query.get("key", "").strip()
    if not key:
        raise _bad('the proposed object key must be passed as a query parameter, e.g. "?uploads&key=photo.jpg"')
    metadata: dict[str, str | None] = {"filename": filename_of(key)}
    if request.content_type not in ("", "application/octet-stream"):
        metadata["filetype"] = request.content_type
    upload = await request.app[SERVICE].create(
        owner_of(request), length=None, metadata=metadata, part_size_hint=UPPY_PART_SIZE, part_checksum=None,
        allowance=allowance_of(request))
    return _xml("InitiateMultipartUploadResult",
                [("Bucket", upload.bucket), ("Key", upload.key), ("UploadId", upload.id)])


def _numbers(body: dict[str, Any]) -> list[int]:
    parts = body.get("parts")
    if (not isinstance(parts, list) or not parts
            or not all(type(n) is int and 1 <= n <= S3_MAX_PARTS for n in parts)):
        raise UploadError(ErrorCode.UNKNOWN_PART, f'"parts" must be a non-empty list of numbers 1..{S3_MAX_PARTS}')
    return list(dict.fromkeys(parts))


async def part_urls(request: web.Request) -> web.Response:
    """UploadPart URLs, signed ahead: Uppy uploads a file's parts one after another and asks for each,
    so the client signs the next parts in one request. Parts the upload could not reach are left out."""
    numbers = _numbers(await read_json_object(request, MAX_URLS_BODY))
    # pin_length=False: Uppy does not say which part is the last; sizes are checked at complete.
    result = await request.app[SERVICE].sign(upload_id_of(request), owner_of(request),
                                             [PartRequest(n) for n in numbers], None,
                                             pin_length=False, within_reach=True)
    return web.json_response({"expires_in": result.expires_in, "urls": {str(p.number): p.url for p in result.parts}},
                             headers={"Cache-Control": "no-store"})


async def list_parts(request: web.Request) -> web.Response:
    """What S3 holds (a short last part included), for Uppy's resume: it skips the listed parts."""
    upload_id = upload_id_of(request)
    parts = await request.app[SERVICE].held_parts(upload_id, owner_of(request))
    listed = "".join(
        f"<Part><PartNumber>{p.number}</PartNumber><ETag>{escape(_quoted(p.etag), _ETAG_ENTITIES)}</ETag>"
        f"<Size>{p.size}</Size></Part>" for p in parts)
    return _xml("ListPartsResult", [("UploadId", upload_id), ("IsTruncated", "false")], listed)


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def completion_numbers(body: bytes) -> list[int]:
    """The part numbers of a CompleteMultipartUpload document (the ETags are S3's to know)."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise _bad("the body is not a CompleteMultipartUpload XML document") from None
    numbers: list[int] = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "PartNumber":
            text = (element.text or "").strip()
            if not text.isdigit() or len(text) > 5:
                raise _bad("a PartNumber is not a number")
            numbers.append(int(text))
    if not numbers:
        raise _bad("the CompleteMultipartUpload document lists no parts")
    return numbers


async def complete(request: web.Request) -> web.Response:
    numbers = completion_numbers(await read_small_body(request, MAX_COMPLETE_BODY, "CompleteMultipartUpload body"))
    # `completing`: S3 is still assembling (the completion worker finishes it); the location answers
    # 409 not_ready until then.
    done = await request.app[SERVICE].complete_listed(upload_id_of(request), owner_of(request), numbers)
    return _xml("CompleteMultipartUploadResult", [
        ("Location", upload_url(request, done.id)), ("Bucket", done.bucket), ("Key", done.key)])


async def abort(request: web.Request) -> web.Response:
    await request.app[SERVICE].abort_multipart(upload_id_of(request), owner_of(request))
    return web.Response(status=204)


class _Skipping:
    """The body of a retried PUT from `offset` on: the bytes before it are already in the upload."""

    def __init__(self, body: RequestBodyStream, skip: int) -> None:
        self.body = body
        self.skip = skip
        self.length = None if body.length is None else body.length - skip

    def abort(self) -> None:
        self.body.abort()

    async def read(self, limit: int) -> bytes:
        while self.skip:
            dropped = await self.body.read(min(self.skip, 1024 * 1024))
            if not dropped:
                return b""
            self.skip -= len(dropped)
        return await self.body.read(limit)


async def put_object(request: web.Request) -> web.Response:
    """PutObject into an upload created with `POST /files/s3`: the whole file as the body, through the
    proxy path (so the owner's quota and the size limit bound it before a byte is stored). A retried PUT
    after a drop continues: the bytes the upload already holds are read past, not stored twice."""
    length = request.content_length
    if length is None:
        raise UploadError(ErrorCode.INVALID_UPLOAD_LENGTH, "PutObject needs a Content-Length")
    upload_id, owner = upload_id_of(request), owner_of(request)
    upload: Upload = await request.app[SERVICE].load(upload_id, owner)
    if upload.length is not None and upload.length != length:
        raise UploadError(ErrorCode.INCONSISTENT_LENGTH, f"the upload's length is {upload.length}")
    if upload.state in (State.COMPLETING, State.COMPLETED):
        return web.Response(status=200)  # a repeated PUT after a lost answer
    offset = upload.offset
    body = RequestBodyStream(request)
    done = await request.app[PROXY].patch(upload_id, owner, offset, _Skipping(body, offset) if offset else body,
                                          declared_length=None if upload.length is not None else length)
    if done.offset != length:
        raise UploadError(ErrorCode.REQUEST_TIMEOUT, f"the body ended at byte {done.offset} of {length}; send it again")
    return web.Response(status=200)
