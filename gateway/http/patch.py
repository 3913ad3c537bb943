"""tus PATCH (the proxy path) and creation-with-upload: headers and body in, the core streams."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from email.utils import format_datetime

from aiohttp import web

from gateway.core.checksums import ALGORITHMS
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import Upload
from gateway.core.proxy import BodyInterrupted, ExpectedChecksum
from gateway.http.keys import PROXY, SETTINGS
from gateway.http.common import owner_of, parse_non_negative

log = logging.getLogger(__name__)

OFFSET_OCTET_STREAM = "application/offset+octet-stream"


class RequestBodyStream:
    """aiohttp's request stream with an idle timeout; a drop or a stall ends it as BodyInterrupted."""

    def __init__(self, request: web.Request, idle_timeout: float) -> None:
        self.content = request.content
        self.length = request.content_length
        self.idle_timeout = idle_timeout

    async def read(self, limit: int) -> bytes:
        try:
            return await asyncio.wait_for(self.content.read(limit), self.idle_timeout)
        except asyncio.TimeoutError:
            raise BodyInterrupted("no bytes for too long") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aiohttp reports a dropped client in several ways
            raise BodyInterrupted(repr(exc)) from exc


def parse_upload_checksum(request: web.Request) -> ExpectedChecksum | None:
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


def _body(request: web.Request) -> RequestBodyStream:
    return RequestBodyStream(request, request.app[SETTINGS].body_idle_timeout)


def progress_headers(upload: Upload) -> dict[str, str]:
    return {"Upload-Offset": str(upload.offset),
            "Upload-Expires": format_datetime(upload.expires_at, usegmt=True)}


async def patch(request: web.Request) -> web.Response:
    if request.content_type != OFFSET_OCTET_STREAM:
        raise UploadError(ErrorCode.INVALID_CONTENT_TYPE, f"PATCH needs Content-Type: {OFFSET_OCTET_STREAM}")
    offset = parse_non_negative(request, "Upload-Offset")
    if offset is None:
        raise UploadError(ErrorCode.INVALID_OFFSET, "Upload-Offset is required")
    upload = await request.app[PROXY].patch(
        request.match_info["upload_id"], owner_of(request), offset, _body(request),
        declared_length=parse_non_negative(request, "Upload-Length"), checksum=parse_upload_checksum(request))
    return web.Response(status=204, headers=progress_headers(upload))


def has_upload_body(request: web.Request) -> bool:
    """creation-with-upload: a POST whose body is the upload's first bytes."""
    if request.content_type != OFFSET_OCTET_STREAM:
        return False  # clients that force a default Content-Type send no data (as tusd treats them)
    return request.content_length != 0


async def upload_during_creation(request: web.Request, upload: Upload,
                                 checksum: ExpectedChecksum | None) -> Upload:
    """The created upload keeps whatever bytes arrive; a failure here still answers 201 (offset says it)."""
    try:
        return await request.app[PROXY].patch(upload.id, owner_of(request), 0, _body(request), checksum=checksum)
    except UploadError as exc:
        log.info("creation-with-upload of %s kept no data: %s", upload.id, exc)
        return upload
