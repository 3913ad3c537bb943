"""presigned-parts handlers (docs/architecture.md §3.2): sign, confirm, list."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import S3_MAX_PARTS, Upload
from gateway.core.uploads import PartRequest
from gateway.http.common import DIGITS, owner_of, read_json_object, upload_id_of
from gateway.http.keys import SERVICE

MAX_JSON_BODY = 256 * 1024


def _bad(message: str) -> UploadError:
    return UploadError(ErrorCode.INVALID_REQUEST, message)


def _part_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad("part numbers are integers")
    return value


def _part_request(item: Any) -> PartRequest:
    if isinstance(item, dict):
        checksum = item.get("checksum")
        if checksum is not None and not isinstance(checksum, str):
            raise _bad("a part checksum is a base64 string")
        return PartRequest(_part_number(item.get("number")), checksum)
    return PartRequest(_part_number(item))


def _parts_list(body: dict[str, Any]) -> list[Any]:
    parts = body.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _bad('"parts" must be a non-empty list')
    return parts


def _offset_headers(upload: Upload) -> dict[str, str]:
    return {"Upload-Offset": str(upload.offset)}


async def sign(request: web.Request) -> web.Response:
    body = await read_json_object(request, MAX_JSON_BODY)
    length = body.get("length")
    # An empty list is allowed with "length": declaring the length of a deferred upload whose
    # confirmed parts already end on a part boundary.
    requests = [] if body.get("parts") == [] and length is not None else [
        _part_request(item) for item in _parts_list(body)]
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
        raise _bad('"length" must be a non-negative integer')
    result = await request.app[SERVICE].sign(upload_id_of(request), owner_of(request), requests, length)
    upload = result.upload
    return web.json_response({
        "offset": upload.offset,
        "length": upload.length,
        "part_size": upload.part_size,
        "expires_at": result.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_in": result.expires_in,
        "parts": [{"number": p.number, "offset": p.offset, "length": p.length, "method": "PUT",
                   "url": p.url, "headers": p.headers} for p in result.parts],
    }, headers=_offset_headers(upload))


async def confirm_one(request: web.Request) -> web.Response:
    raw = request.match_info["number"]
    if not DIGITS.match(raw) or len(raw) > 5:
        raise UploadError(ErrorCode.UNKNOWN_PART, f"part numbers are 1..{S3_MAX_PARTS}")
    upload = await request.app[SERVICE].confirm(upload_id_of(request), owner_of(request), [int(raw)])
    return web.Response(status=204, headers=_offset_headers(upload))


async def confirm_many(request: web.Request) -> web.Response:
    body = await read_json_object(request, MAX_JSON_BODY)
    numbers = [_part_number(n) for n in _parts_list(body)]
    upload = await request.app[SERVICE].confirm(upload_id_of(request), owner_of(request), numbers)
    return web.Response(status=204, headers=_offset_headers(upload))


async def list_parts(request: web.Request) -> web.Response:
    upload, parts = await request.app[SERVICE].list_parts(upload_id_of(request), owner_of(request))
    return web.json_response({
        "offset": upload.offset,
        "length": upload.length,
        "part_size": upload.part_size,
        "state": upload.state.value,
        "parts": [{"number": p.number, "size": p.size, "etag": p.etag, "checksum": p.checksum} for p in parts],
    }, headers={**_offset_headers(upload), "Cache-Control": "no-store"})
