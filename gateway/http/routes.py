"""Routes and request middlewares of the gateway."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.core.errors import ErrorCode, UploadError
from gateway.http import companion, ietf, parts, patch, tus
from gateway.http.common import UPLOAD_ID_PATTERN
from gateway.http.cors import cors_middleware
from gateway.http.errors import error_middleware
from gateway.http.keys import AUTHENTICATOR, OWNER, READINESS_CHECKS, SETTINGS
from gateway.http.observability import (
    InFlight, TokenBuckets, metrics, observability_middleware, rate_limit_middleware,
)

# Route names: `tus.*` require Tus-Resumable; `public.*` need no token.
_UPLOAD_ID = f"{{upload_id:{UPLOAD_ID_PATTERN}}}"


@web.middleware
async def tus_resumable_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """tus MUST: 412 with Tus-Version for a missing or unsupported version (OPTIONS excepted)."""
    name = request.match_info.route.name or ""
    if name.startswith("tus.") and request.method != "OPTIONS" and not ietf.is_ietf(request):
        if request.headers.get("Tus-Resumable", "").strip() != tus.TUS_VERSION:
            raise UploadError(ErrorCode.UNSUPPORTED_VERSION,
                              f"Tus-Resumable: {tus.TUS_VERSION} is required on tus requests")
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    name = request.match_info.route.name or ""
    if request.method != "OPTIONS" and not name.startswith("public.") and request.match_info.http_exception is None:
        request[OWNER] = request.app[AUTHENTICATOR].owner(request.headers.get("Authorization"))
    return await handler(request)


async def _tus_resumable_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Tus-Resumable"] = tus.TUS_VERSION


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Postgres and S3 answer within a few seconds."""
    failures = {}
    for name, check in request.app[READINESS_CHECKS].items():
        try:
            await asyncio.wait_for(check(), 3)
        except Exception as exc:  # any failure means not ready; say which dependency
            failures[name] = type(exc).__name__
    if failures:
        return web.json_response({"status": "unavailable", "failing": failures}, status=503,
                                 headers={"Retry-After": "5"})
    return web.json_response({"status": "ready"})


def setup_routes(app: web.Application, base_path: str) -> None:
    router = app.router
    router.add_get("/healthz", healthz, name="public.healthz")
    router.add_get("/readyz", readyz, name="public.readyz")
    router.add_get("/metrics", metrics, name="public.metrics")

    collection = router.add_resource(base_path, name="tus.collection")
    collection.add_route("OPTIONS", ietf.by_protocol(tus.options, ietf.options))
    collection.add_route("POST", ietf.by_protocol(tus.create, ietf.create))

    upload = router.add_resource(f"{base_path}/{_UPLOAD_ID}", name="tus.upload")
    upload.add_route("OPTIONS", ietf.by_protocol(tus.options, ietf.options))
    upload.add_route("HEAD", ietf.by_protocol(tus.head, ietf.head))
    upload.add_route("DELETE", ietf.by_protocol(tus.delete, ietf.cancel))
    upload.add_route("PATCH", ietf.by_protocol(patch.patch, ietf.append))
    upload.add_route("POST", tus.method_override({"HEAD": tus.head, "PATCH": patch.patch, "DELETE": tus.delete}))

    # Downloads may be visited by a browser, so they do not demand Tus-Resumable.
    download = router.add_resource(f"{base_path}/{_UPLOAD_ID}", name="download")
    download.add_route("GET", tus.download)

    part_list = router.add_resource(f"{base_path}/{_UPLOAD_ID}/parts", name="parts.collection")
    part_list.add_route("OPTIONS", tus.options)
    part_list.add_route("POST", parts.sign)
    part_list.add_route("PUT", parts.confirm_many)
    part_list.add_route("GET", parts.list_parts)

    part = router.add_resource(f"{base_path}/{_UPLOAD_ID}/parts/{{number}}", name="parts.one")
    part.add_route("OPTIONS", tus.options)
    part.add_route("PUT", parts.confirm_one)
    companion.setup_routes(router)  # Uppy Companion's S3 multipart routes (@uppy/aws-s3)


IN_FLIGHT = web.AppKey("in_flight", InFlight)


def setup_http(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[IN_FLIGHT] = InFlight()
    parts = TokenBuckets(settings.rate_limit_parts, 2 * settings.rate_limit_parts) if settings.rate_limit_parts else None
    head = TokenBuckets(settings.rate_limit_head, 2 * settings.rate_limit_head) if settings.rate_limit_head else None
    app.middlewares.extend([app[IN_FLIGHT].middleware, observability_middleware(settings.access_log), cors_middleware(settings.cors_origins),
                            error_middleware, tus_resumable_middleware, auth_middleware,
                            rate_limit_middleware(parts, head)])
    app.on_response_prepare.append(_tus_resumable_header)
    setup_routes(app, settings.base_path)
