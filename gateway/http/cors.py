"""CORS for browser clients: preflights, and the tus headers scripts must be able to read."""

from __future__ import annotations

from typing import Any

from aiohttp import web

ALLOWED_METHODS = "GET, HEAD, POST, PATCH, PUT, DELETE, OPTIONS"
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Defer-Length, Upload-Metadata, "
    "Upload-Offset, Upload-Checksum, Upload-Concat, Upload-Part-Size, Upload-Part-Checksum, "
    "X-HTTP-Method-Override, X-Requested-With, X-Request-Id, Upload-Complete, Upload-Draft-Interop-Version, "
    "Content-Disposition"
)
EXPOSED_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Defer-Length, Upload-Expires, Upload-Part-Size, "
    "Upload-Part-Checksum, Upload-Metadata, Upload-Concat, Tus-Resumable, Tus-Version, Tus-Extension, "
    "Tus-Max-Size, Tus-Checksum-Algorithm, Retry-After, X-Request-Id, Upload-Complete, Upload-Limit, "
    "Upload-Draft-Interop-Version"
)
PREFLIGHT_MAX_AGE = "86400"


def cors_middleware(origins: tuple[str, ...]) -> Any:
    allow_any = "*" in origins
    allowed = frozenset(origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        permitted = origin is not None and (allow_any or origin in allowed)
        response = await handler(request)
        if permitted and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        if permitted:
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
        return response

    return middleware
