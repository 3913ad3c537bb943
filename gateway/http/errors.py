"""The one place where error codes become HTTP statuses, and where raised errors become responses.

Every error answers `{"error": {"code", "message"}}` (plus `details` when useful). Anything that is not
an UploadError is logged with its traceback and becomes a generic 500 without internal detail.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from gateway.core.errors import ErrorCode, UploadError

log = logging.getLogger(__name__)

STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNSUPPORTED_VERSION: 412,
    ErrorCode.INVALID_UPLOAD_LENGTH: 400,
    ErrorCode.AMBIGUOUS_UPLOAD_LENGTH: 400,
    ErrorCode.INVALID_METADATA: 400,
    ErrorCode.INVALID_PART_SIZE: 400,
    ErrorCode.INVALID_CHECKSUM_ALGORITHM: 400,
    ErrorCode.INVALID_CONCAT: 400,
    ErrorCode.UPLOAD_NOT_FINISHED: 400,
    ErrorCode.MODIFY_FINAL: 403,
    ErrorCode.INCONSISTENT_LENGTH: 400,
    ErrorCode.COMPLETED_UPLOAD: 410,
    ErrorCode.UNKNOWN_PART: 400,
    ErrorCode.BATCH_TOO_LARGE: 400,
    ErrorCode.CHECKSUM_REQUIRED: 400,
    ErrorCode.INVALID_OFFSET: 400,
    ErrorCode.INVALID_CONTENT_TYPE: 415,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.INSUFFICIENT_SCOPE: 403,
    ErrorCode.IDENTITY_UNAVAILABLE: 503,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.GONE: 410,
    ErrorCode.UPLOAD_EXPIRED: 410,
    ErrorCode.UPLOAD_FAILED: 410,
    ErrorCode.NOT_READY: 409,
    ErrorCode.UPLOAD_COMPLETED: 409,
    ErrorCode.UPLOAD_NOT_ACTIVE: 409,
    ErrorCode.MAX_SIZE_EXCEEDED: 413,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.QUOTA_EXCEEDED: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.HOOK_REJECTED: 403,
    ErrorCode.HOOK_UNAVAILABLE: 503,
    ErrorCode.OFFSET_MISMATCH: 409,
    ErrorCode.PART_CONFIRMED: 409,
    ErrorCode.PART_NOT_VISIBLE: 409,
    ErrorCode.SIZE_MISMATCH: 409,
    ErrorCode.LENGTH_ALREADY_SET: 400,
    ErrorCode.LENGTH_CONFLICT: 409,
    ErrorCode.COMPLETING: 409,
    ErrorCode.PATH_CONFLICT: 409,
    ErrorCode.WRITER_PREEMPTED: 409,
    ErrorCode.CHECKSUM_MISMATCH: 460,
    ErrorCode.UPLOAD_LOCKED: 423,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
}

# aiohttp's own refusals (unknown route, wrong method, body too large) keep their status.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def error_response(status: int, code: str, message: str, *, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return web.Response(status=status, text=json.dumps({"error": body}), content_type="application/json",
                        headers=headers)


def _headers(exc: UploadError) -> dict[str, str]:
    """Headers every rendering of an error carries."""
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.code is ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    elif exc.code is ErrorCode.INSUFFICIENT_SCOPE:
        headers["WWW-Authenticate"] = 'Bearer error="insufficient_scope"'
    return headers


def render(exc: UploadError) -> web.Response:
    headers = _headers(exc)
    if exc.code is ErrorCode.UNSUPPORTED_VERSION:
        headers["Tus-Version"] = "1.0.0"
    return error_response(STATUS[exc.code], exc.code.value, exc.message, details=exc.details, headers=headers)


# Problem types of the IETF resumable upload draft; other errors are "about:blank" with the status.
_PROBLEM_TYPES = {
    ErrorCode.OFFSET_MISMATCH: "mismatching-upload-offset",
    ErrorCode.INCONSISTENT_LENGTH: "inconsistent-upload-length",
    ErrorCode.COMPLETED_UPLOAD: "completed-upload",
}


def render_problem(exc: UploadError) -> web.Response:
    """RFC 9457 problem details, for clients of the IETF draft."""
    status = STATUS[exc.code]
    kind = _PROBLEM_TYPES.get(exc.code)
    body: dict[str, Any] = {"type": f"https://iana.org/assignments/http-problem-types#{kind}" if kind
                            else "about:blank", "title": exc.message, "status": status, "code": exc.code.value}
    headers = _headers(exc)
    if exc.code is ErrorCode.OFFSET_MISMATCH:
        body["expected-offset"] = exc.details.get("offset")
        body["provided-offset"] = exc.details.get("provided_offset")
        headers["Upload-Offset"] = str(exc.details.get("offset"))
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/problem+json",
                        headers=headers)


def response_for_error(request: web.Request, exc: Exception) -> web.Response | None:
    """The answer to an exception a handler raised; None for one that is not an error (an HTTPException
    below 400), which the caller re-raises. Called from an `except` block: an unexpected exception is
    logged with its traceback."""
    if isinstance(exc, UploadError):
        response = render_problem(exc) if "Upload-Draft-Interop-Version" in request.headers else render(exc)
        if exc.code is ErrorCode.REQUEST_TIMEOUT:
            response.force_close()  # the rest of the body is not coming: the connection cannot be reused
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, code, exc.reason, headers=headers)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal server error")


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """`response_for_error` as a middleware of its own (the ops app's only one; the API app's request
    middleware, gateway/http/routes.py, calls it within its single layer)."""
    try:
        return await handler(request)
    except Exception as exc:
        response = response_for_error(request, exc)
        if response is None:
            raise
        return response
