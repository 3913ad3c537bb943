"""CORS for browser clients: preflights, and the tus headers scripts must be able to read."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

ALLOWED_METHODS = "GET, HEAD, POST, PATCH, PUT, DELETE, OPTIONS"
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Defer-Length, Upload-Metadata, "
    "Upload-Offset, Upload-Checksum, Upload-Concat, Upload-Part-Size, Upload-Part-Checksum, "
    "X-HTTP-Method-Override, X-Requested-With, X-Request-Id, Upload-Complete, Upload-Incomplete, "
    "Upload-Draft-Interop-Version, "
    "Content-Disposition"
)
EXPOSED_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Defer-Length, Upload-Expires, Upload-Part-Size, "
    "Upload-Part-Checksum, Upload-Metadata, Upload-Concat, Tus-Resumable, Tus-Version, Tus-Extension, "
    "Tus-Max-Size, Tus-Checksum-Algorithm, Retry-After, X-Request-Id, Upload-Complete, Upload-Incomplete, "
    "Upload-Limit, "
    "Upload-Draft-Interop-Version"
)
PREFLIGHT_MAX_AGE = "86400"


CorsHeaders = Callable[[web.Request, web.StreamResponse], None]


def cors_headers(origins: tuple[str, ...]) -> CorsHeaders | None:
    """What adds the CORS headers to a response (every response, errors included): the allowed origin and
    the readable headers, the preflight's answer headers, and `Vary: Origin`. None when no origin is
    configured (GATEWAY_CORS_ORIGINS empty): then no response depends on Origin and there is nothing to add."""
    if not origins:
        return None
    allow_any = "*" in origins
    allowed = frozenset(origins)

    def add(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        headers = response.headers
        if origin is not None and (allow_any or origin in allowed):
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
                headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
                headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        headers.add("Vary", "Origin")

    return add
