"""Uppy Companion's S3 multipart routes (`@uppy/aws-s3` with `endpoint` + `headers`), over the gateway's state.

The same paths, `key` query parameter and JSON shapes as Companion's `/s3/multipart` controller
(packages/@uppy/companion/src/server/controllers/s3.js), so an app swaps Companion for the gateway by
changing `endpoint` and adding `headers: {Authorization: 'Bearer ...'}`. Unlike Companion, every route
is scoped to the token's owner (another owner's upload is 404) and the `key` must be the upload's own
key (400 otherwise). Uploads are the gateway's own uploads: deferred length and 5 MiB parts, the part
size @uppy/aws-s3 uses for files up to 5 MiB x 10,000 (~48.8 GiB); the length follows from the parts
at complete. Errors keep the gateway's JSON format (`gateway.http.errors`).

    POST   /s3/multipart                          {filename, type, metadata} -> {uploadId, key, bucket}
    GET    /s3/multipart/{id}?key=                -> [{PartNumber, Size, ETag}]
    GET    /s3/multipart/{id}/batch?key=&partNumbers=1,2 -> {presignedUrls: {"1": url, "2": url}}
    GET    /s3/multipart/{id}/{n}?key=            -> {url, expires}
    POST   /s3/multipart/{id}/complete?key=       {parts: [{PartNumber, ETag}]} -> {location, key, bucket}
    DELETE /s3/multipart/{id}?key=                -> {}

`GET /s3/params` (a single presigned POST/PUT) and `GET /s3/sts` (temporary credentials) are refused
with a 400 that says why: an object written outside a multipart upload the gateway tracks would never
be verified, recorded or owned. Uppy must run with `shouldUseMultipart: true`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import S3_MAX_PARTS, MiB, Upload
from gateway.core.uploads import PartRequest
from gateway.http.common import allowance_of, owner_of, read_json_object, upload_id_of, upload_url
from gateway.http.keys import SERVICE

# @uppy/aws-s3 5.x: chunk size max(5 MiB, ceil(size / 10000)), i.e. 5 MiB for files up to ~48.8 GiB.
UPPY_PART_SIZE = 5 * MiB
MAX_CREATE_BODY = 64 * 1024
# Companion accepts 1 MB on complete (uppy#1945): 10,000 {PartNumber, ETag} entries are ~500 KB.
MAX_COMPLETE_BODY = 1024 * 1024
_NUMBER = re.compile(r"^[0-9]{1,9}$")


def _bad(message: str) -> UploadError:
    return UploadError(ErrorCode.INVALID_REQUEST, message)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _metadata(filename: str, content_type: str, metadata: dict[str, Any]) -> dict[str, str | None]:
    """`filename`/`filetype` (what the rest of the gateway reads) plus Uppy's meta."""
    values: dict[str, str | None] = {"filename": filename}
    if content_type:
        values["filetype"] = content_type
    for key, value in metadata.items():
        if value is not None and key not in values:
            values[key] = _text(value)
    return values


async def _upload_for(request: web.Request) -> Upload:
    """The caller's upload named by the path, whose key the `key` query parameter must repeat."""
    key = request.query.get("key")
    if not key:
        raise _bad('the object key must be passed as a query parameter, e.g. "?key=uploads/ab/00ab..."')
    upload: Upload = await request.app[SERVICE].load(upload_id_of(request), owner_of(request))
    if upload.key != key:
        raise _bad("the key does not belong to this upload")
    return upload


# -- handlers -----------------------------------------------------------------------------------------


async def options(request: web.Request) -> web.Response:
    """CORS preflight (the CORS middleware adds the Access-Control-* headers)."""
    return web.Response(status=204)


async def create(request: web.Request) -> web.Response:
    body = await read_json_object(request, MAX_CREATE_BODY)
    filename, content_type, metadata = body.get("filename"), body.get("type"), body.get("metadata", {})
    if not isinstance(filename, str) or not filename:
        raise _bad('the "filename" field is required and must be a non-empty string')
    if not isinstance(content_type, str):
        raise _bad('"type" (the content type) must be a string')
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _bad('"metadata" must be an object')
    upload = await request.app[SERVICE].create(
        owner_of(request), length=None, metadata=_metadata(filename, content_type, metadata),
        part_size_hint=UPPY_PART_SIZE, part_checksum=None, allowance=allowance_of(request))
    return web.json_response({"uploadId": upload.id, "key": upload.key, "bucket": upload.bucket})


async def sign_part(request: web.Request) -> web.Response:
    upload = await _upload_for(request)
    number = int(request.match_info["part_number"])
    # pin_length=False: Uppy does not say which part is the last; sizes are checked at complete.
    result = await request.app[SERVICE].sign(upload.id, owner_of(request), [PartRequest(number)], None,
                                             pin_length=False)
    # No part checksums here: uploads created on /s3/multipart have none (one created on /files with
    # Upload-Part-Checksum answers 400 checksum_required, as Uppy cannot send a part's digest).
    return web.json_response({"url": result.parts[0].url, "expires": result.expires_in},
                             headers={"Cache-Control": "no-store"})


async def sign_batch(request: web.Request) -> web.Response:
    upload = await _upload_for(request)
    raw = request.query.get("partNumbers")
    if not raw:
        raise _bad('the part numbers must be passed as a comma separated query parameter, e.g. "?partNumbers=4,6,7"')
    items = [item.strip() for item in raw.split(",")]
    if not all(_NUMBER.match(item) for item in items):
        raise UploadError(ErrorCode.UNKNOWN_PART, f"the part numbers must be numbers between 1 and {S3_MAX_PARTS}")
    numbers = list(dict.fromkeys(int(item) for item in items))
    result = await request.app[SERVICE].sign(upload.id, owner_of(request), [PartRequest(n) for n in numbers],
                                             None, pin_length=False)
    return web.json_response({"presignedUrls": {str(p.number): p.url for p in result.parts}},
                             headers={"Cache-Control": "no-store"})


async def list_parts(request: web.Request) -> web.Response:
    """The parts S3 holds for this upload, exactly as S3 lists them (a short last part included), for
    @uppy/aws-s3's resume: it skips the listed parts, so none is uploaded twice. Nothing is recorded:
    the complete request checks the parts with S3 again."""
    upload = await _upload_for(request)
    parts = await request.app[SERVICE].held_parts(upload.id, owner_of(request))
    return web.json_response([{"PartNumber": p.number, "Size": p.size, "ETag": p.etag} for p in parts],
                             headers={"Cache-Control": "no-store"})


def _completion_parts(body: dict[str, Any]) -> list[int]:
    parts = body.get("parts")
    if not isinstance(parts, list) or not parts or not all(
            isinstance(p, dict) and type(p.get("PartNumber")) is int and isinstance(p.get("ETag"), str)
            for p in parts):
        raise _bad('"parts" must be a non-empty array of {ETag, PartNumber} objects')
    return [p["PartNumber"] for p in parts]


async def complete(request: web.Request) -> web.Response:
    upload = await _upload_for(request)
    numbers = _completion_parts(await read_json_object(request, MAX_COMPLETE_BODY))
    # The ETags are S3's to know: the gateway completes with the parts S3 lists (sizes checked).
    # `completing`: S3 is still assembling (the completion worker finishes it); the location answers
    # 409 not_ready until then.
    done = await request.app[SERVICE].complete_listed(upload.id, owner_of(request), numbers)
    return web.json_response({"location": upload_url(request, done.id), "key": done.key, "bucket": done.bucket})


async def abort(request: web.Request) -> web.Response:
    upload = await _upload_for(request)
    await request.app[SERVICE].abort_multipart(upload.id, owner_of(request))
    return web.json_response({})


async def params(request: web.Request) -> web.Response:
    raise _bad("single-request uploads (/s3/params) are not supported: an object written outside a tracked "
               "multipart upload is never verified or recorded; configure @uppy/aws-s3 with shouldUseMultipart: true")


async def sts(request: web.Request) -> web.Response:
    raise _bad("temporary S3 credentials (/s3/sts) are never handed out; use the signed part URLs of /s3/multipart")
