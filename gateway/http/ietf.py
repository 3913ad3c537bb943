"""IETF "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload-01 to -11, interop versions
3 to 8).

The same upload model as tus, spoken in the draft's terms: creation with `Upload-Complete`, a
`104 (Upload Resumption Supported)` interim response carrying the upload's `Location` before the
body is read, offset retrieval with HEAD, append with `application/partial-upload`, cancellation
with DELETE, `Upload-Limit`, and problem details (RFC 9457) for errors. Requests are recognised by
`Upload-Draft-Interop-Version`, as tusd does for its draft versions; each version clients still send is
answered as its own draft says (DRAFTS), on the same uploads.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import State, Upload
from gateway.http.common import RequestBodyStream, allowance_of, owner_of, upload_id_of, upload_url
from gateway.http.errors import STATUS
from gateway.http.keys import PROXY, SERVICE, SETTINGS

PARTIAL_UPLOAD = "application/partial-upload"


@dataclass(frozen=True)
class Draft:
    """What one interop version changes on the wire (the drafts' change logs, appendix "Changes")."""

    interop: str
    # -01 (interop 3) says `Upload-Incomplete: ?1` while more is to come; -02 on says `Upload-Complete: ?1`
    # when the request carries the rest.
    incomplete_header: bool
    # From -04 (interop 6) an append must be `application/partial-upload`; before, any type goes.
    partial_upload_type: bool
    # Upload-Limit came with -04; its lifetime key was `expires` there and in -05, `max-age` from -06.
    limit_age_key: str | None


# tus-js-client 4.3: `protocol: 'ietf-draft-03'` sends 5, `'ietf-draft-05'` sends 6; Apple's URLSession
# on iOS 17 sends 3.
DRAFTS = {d.interop: d for d in (
    Draft("3", incomplete_header=True, partial_upload_type=False, limit_age_key=None),
    Draft("4", incomplete_header=False, partial_upload_type=False, limit_age_key=None),
    Draft("5", incomplete_header=False, partial_upload_type=False, limit_age_key=None),
    Draft("6", incomplete_header=False, partial_upload_type=True, limit_age_key="expires"),
    Draft("7", incomplete_header=False, partial_upload_type=True, limit_age_key="max-age"),
    Draft("8", incomplete_header=False, partial_upload_type=True, limit_age_key="max-age"),
)}
LATEST = DRAFTS["8"]
_DRAFT = web.RequestKey("ietf_draft", Draft)
_SF_INTEGER = re.compile(r"^[0-9]{1,15}$")
_FILENAME_STAR = re.compile(r"filename\*\s*=\s*UTF-8''([^;\s]+)", re.IGNORECASE)
_FILENAME = re.compile(r'filename\s*=\s*"?([^";]+)"?', re.IGNORECASE)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_ietf(request: web.Request) -> bool:
    return "Upload-Draft-Interop-Version" in request.headers


def by_protocol(tus_handler: Handler, ietf_handler: Handler) -> Handler:
    """One URL, two protocols: the draft's requests carry Upload-Draft-Interop-Version."""

    async def dispatch(request: web.Request) -> web.StreamResponse:
        if not is_ietf(request):
            return await tus_handler(request)
        draft = DRAFTS.get(request.headers["Upload-Draft-Interop-Version"].strip())
        if draft is None:
            raise UploadError(ErrorCode.UNSUPPORTED_VERSION,
                              f"Upload-Draft-Interop-Version must be one of {', '.join(DRAFTS)}")
        request[_DRAFT] = draft
        return await ietf_handler(request)

    return dispatch


def draft_of(request: web.Request) -> Draft:
    return request.get(_DRAFT, LATEST)


def _complete(request: web.Request) -> bool:
    """Whether the request carries the upload's last byte, in its draft's words."""
    name = "Upload-Incomplete" if draft_of(request).incomplete_header else "Upload-Complete"
    value = request.headers.get(name, "").strip()
    if value not in ("?0", "?1"):
        raise UploadError(ErrorCode.INVALID_REQUEST, f"{name} must be the structured boolean ?0 or ?1")
    return (value == "?1") != (name == "Upload-Incomplete")


def _integer(request: web.Request, name: str) -> int | None:
    value = request.headers.get(name)
    if value is None:
        return None
    if not _SF_INTEGER.match(value.strip()):
        code = ErrorCode.INVALID_OFFSET if name == "Upload-Offset" else ErrorCode.INVALID_UPLOAD_LENGTH
        raise UploadError(code, f"{name} must be a non-negative structured integer")
    return int(value)


def _version_headers(request: web.Request) -> dict[str, str]:
    """The interop version the request spoke, and Upload-Limit where its draft has one."""
    draft = draft_of(request)
    headers = {"Upload-Draft-Interop-Version": draft.interop}
    if draft.limit_age_key is not None:
        settings = request.app[SETTINGS]
        headers["Upload-Limit"] = (f"max-size={settings.max_upload_size}, min-size=0, "
                                   f"{draft.limit_age_key}={settings.upload_ttl}")
    return headers


def _state_headers(request: web.Request, upload: Upload) -> dict[str, str]:
    done = upload.state in (State.COMPLETING, State.COMPLETED)
    headers = {**_version_headers(request), "Upload-Offset": str(upload.offset)}
    if draft_of(request).incomplete_header:
        headers["Upload-Incomplete"] = "?0" if done else "?1"
    else:
        headers["Upload-Complete"] = "?1" if done else "?0"
    if upload.length is not None:
        headers["Upload-Length"] = str(upload.length)
    return headers


def _representation_metadata(request: web.Request) -> dict[str, str | None]:
    """Content-Type and Content-Disposition's filename become the upload's metadata."""
    metadata: dict[str, str | None] = {}
    disposition = request.headers.get("Content-Disposition", "")
    if match := _FILENAME_STAR.search(disposition):
        metadata["filename"] = unquote(match.group(1))
    elif match := _FILENAME.search(disposition):
        metadata["filename"] = match.group(1)
    content_type = request.headers.get("Content-Type")
    if content_type and content_type.split(";")[0].strip().lower() != PARTIAL_UPLOAD:
        metadata["filetype"] = content_type.split(";")[0].strip()
    return metadata


async def _send_104(request: web.Request, headers: dict[str, str]) -> None:
    """An interim response before the final one (aiohttp itself writes `100 Continue` this way)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    await request.writer.write(f"HTTP/1.1 104 Upload Resumption Supported\r\n{lines}\r\n".encode())


async def create(request: web.Request) -> web.StreamResponse:
    complete = _complete(request)
    length = _integer(request, "Upload-Length")
    if complete and request.content_length is not None:
        if length is not None and length != request.content_length:
            raise UploadError(ErrorCode.INCONSISTENT_LENGTH, "Upload-Length and Content-Length disagree")
        length = request.content_length
    upload = await request.app[SERVICE].create(owner_of(request), length=length,
                                               metadata=_representation_metadata(request),
                                               part_size_hint=None, part_checksum=None,
                                               allowance=allowance_of(request))
    location = upload_url(request, upload.id)
    await _send_104(request, {"Location": location, **_version_headers(request)})
    if upload.state is State.ACTIVE and request.content_length != 0:
        try:
            upload = await request.app[PROXY].append(upload.id, upload.owner, 0, RequestBodyStream(request),
                                                     complete=complete)
        except UploadError as exc:
            # The 104 already named the upload, but a refused creation must leave nothing behind (no
            # orphan counting against the quota); on a 5xx the client may still resume it.
            if STATUS[exc.code] < 500:
                await request.app[SERVICE].terminate(upload.id, upload.owner)
            raise
    return web.Response(status=201, headers={**_state_headers(request, upload), "Location": location})


async def head(request: web.Request) -> web.Response:
    upload_id, owner = upload_id_of(request), owner_of(request)
    await request.app[PROXY].release(upload_id, owner)  # a resuming client: see tus.head
    upload = await request.app[SERVICE].status(upload_id, owner)
    return web.Response(status=204, headers={**_state_headers(request, upload), "Cache-Control": "no-store"})


async def append(request: web.Request) -> web.Response:
    if draft_of(request).partial_upload_type and request.content_type != PARTIAL_UPLOAD:
        raise UploadError(ErrorCode.INVALID_CONTENT_TYPE, f"an append needs Content-Type: {PARTIAL_UPLOAD}")
    offset = _integer(request, "Upload-Offset")
    if offset is None:
        raise UploadError(ErrorCode.INVALID_OFFSET, "Upload-Offset is required")
    complete = _complete(request)
    try:
        upload = await request.app[PROXY].append(upload_id_of(request), owner_of(request), offset,
                                                 RequestBodyStream(request), complete=complete)
    except UploadError as exc:
        if exc.code is ErrorCode.OFFSET_MISMATCH:
            exc.details["provided_offset"] = offset
        raise
    return web.Response(status=204, headers=_state_headers(request, upload))


async def cancel(request: web.Request) -> web.Response:
    await request.app[SERVICE].terminate(upload_id_of(request), owner_of(request))
    return web.Response(status=204, headers={"Upload-Draft-Interop-Version": draft_of(request).interop})


async def options(request: web.Request) -> web.Response:
    headers = _version_headers(request)
    if draft_of(request).partial_upload_type:
        headers["Accept-Patch"] = PARTIAL_UPLOAD
    return web.Response(status=204, headers=headers)
