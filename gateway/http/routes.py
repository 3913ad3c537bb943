"""The route table: every route of the gateway with what it requires, as data a reader can scan
(docs/architecture.md §1), and the middlewares every request passes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.core.errors import ErrorCode, UploadError
from gateway.http import companion, ietf, parts, tus
from gateway.http.common import UPLOAD_ID_PATTERN
from gateway.http.cors import cors_middleware
from gateway.http.errors import error_middleware
from gateway.http.keys import ALLOWANCE, API_APP, AUTHENTICATOR, DRAINING, OWNER, READINESS_CHECKS, SETTINGS
from gateway.http.observability import (
    HEAD_LIMIT,
    PARTS_LIMIT,
    InFlight,
    LimitBucket,
    RateLimiter,
    api_app,
    metrics,
    observability_middleware,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    # The resource name: the `route` label of metrics and access logs.
    name: str
    auth: bool = True
    # tus requests must carry `Tus-Resumable: 1.0.0` (requests of the IETF draft are recognised apart).
    tus: bool = False
    limit: LimitBucket | None = None


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


READINESS_TIMEOUT = 2.0


async def readyz(request: web.Request) -> web.Response:
    """Ready when Postgres and S3 answer (probed at once, 2 s each), and not draining (after SIGTERM)."""
    api = api_app(request)
    if api[DRAINING].is_set():
        return web.json_response({"status": "draining"}, status=503)
    checks = api[READINESS_CHECKS]
    results = await asyncio.gather(*(asyncio.wait_for(check(), READINESS_TIMEOUT) for check in checks.values()),
                                   return_exceptions=True)
    # Any failure means not ready; say which dependency.
    failures = {name: type(result).__name__ for name, result in zip(checks, results, strict=True)
                if isinstance(result, BaseException)}
    if failures:
        return web.json_response({"status": "unavailable", "failing": failures}, status=503,
                                 headers={"Retry-After": "5"})
    return web.json_response({"status": "ready"})


def route_table(base: str, s3_base: str = "/s3") -> list[Route]:
    """Preflights (OPTIONS) never need a token or Tus-Resumable; the CORS middleware answers their headers."""
    upload = f"{base}/{{upload_id:{UPLOAD_ID_PATTERN}}}"
    s3_upload = f"{s3_base}/multipart/{{upload_id:{UPLOAD_ID_PATTERN}}}"
    on_upload = {"HEAD": tus.head, "PATCH": tus.patch, "DELETE": tus.delete}
    return [
        Route("GET", "/healthz", healthz, "public.healthz", auth=False),
        Route("GET", "/readyz", readyz, "public.readyz", auth=False),
        # No /metrics here: it is served on the ops port only (ops_route_table), so the API port answers 404.
        # tus and the IETF draft share the collection and upload URLs.
        Route("OPTIONS", base, ietf.by_protocol(tus.options, ietf.options), "tus.collection", auth=False),
        Route("POST", base, ietf.by_protocol(tus.create, ietf.create), "tus.collection", tus=True),
        Route("OPTIONS", upload, ietf.by_protocol(tus.options, ietf.options), "tus.upload", auth=False),
        Route("HEAD", upload, ietf.by_protocol(tus.head, ietf.head), "tus.upload", tus=True, limit=HEAD_LIMIT),
        Route("DELETE", upload, ietf.by_protocol(tus.delete, ietf.cancel), "tus.upload", tus=True),
        Route("PATCH", upload, ietf.by_protocol(tus.patch, ietf.append), "tus.upload", tus=True),
        Route("POST", upload, tus.method_override(on_upload), "tus.upload", tus=True),
        # Downloads may be visited by a browser, so they do not demand Tus-Resumable.
        Route("GET", upload, tus.download, "download"),
        # The presigned-parts extension (the direct path).
        Route("OPTIONS", f"{upload}/parts", tus.options, "parts.collection", auth=False),
        Route("POST", f"{upload}/parts", parts.sign, "parts.collection", limit=PARTS_LIMIT),
        Route("PUT", f"{upload}/parts", parts.confirm_many, "parts.collection", limit=PARTS_LIMIT),
        Route("GET", f"{upload}/parts", parts.list_parts, "parts.collection", limit=PARTS_LIMIT),
        Route("OPTIONS", f"{upload}/parts/{{number}}", tus.options, "parts.one", auth=False),
        Route("PUT", f"{upload}/parts/{{number}}", parts.confirm_one, "parts.one", limit=PARTS_LIMIT),
        # Uppy Companion's S3 multipart routes (@uppy/aws-s3).
        Route("OPTIONS", f"{s3_base}/params", companion.options, "s3.params", auth=False),
        Route("GET", f"{s3_base}/params", companion.params, "s3.params"),
        Route("OPTIONS", f"{s3_base}/sts", companion.options, "s3.sts", auth=False),
        Route("GET", f"{s3_base}/sts", companion.sts, "s3.sts"),
        Route("OPTIONS", f"{s3_base}/multipart", companion.options, "s3.multipart", auth=False),
        Route("POST", f"{s3_base}/multipart", companion.create, "s3.multipart"),
        Route("OPTIONS", s3_upload, companion.options, "parts.s3.upload", auth=False),
        Route("GET", s3_upload, companion.list_parts, "parts.s3.upload", limit=PARTS_LIMIT),
        Route("DELETE", s3_upload, companion.abort, "parts.s3.upload", limit=PARTS_LIMIT),
        # Before `/{part_number}` as Companion does (the number pattern excludes them anyway).
        Route("OPTIONS", f"{s3_upload}/batch", companion.options, "parts.s3.batch", auth=False),
        Route("GET", f"{s3_upload}/batch", companion.sign_batch, "parts.s3.batch", limit=PARTS_LIMIT),
        Route("OPTIONS", f"{s3_upload}/complete", companion.options, "parts.s3.complete", auth=False),
        Route("POST", f"{s3_upload}/complete", companion.complete, "parts.s3.complete", limit=PARTS_LIMIT),
        Route("OPTIONS", f"{s3_upload}/{{part_number:[0-9]{{1,9}}}}", companion.options, "parts.s3.part",
              auth=False),
        Route("GET", f"{s3_upload}/{{part_number:[0-9]{{1,9}}}}", companion.sign_part, "parts.s3.part",
              limit=PARTS_LIMIT),
    ]


def ops_route_table() -> list[Route]:
    """The ops port (GATEWAY_METRICS_PORT): Prometheus and the probes, for the cluster, not the public.
    It stays open while the API port drains, so /readyz there says `draining`."""
    return [
        Route("GET", "/metrics", metrics, "ops.metrics", auth=False),
        Route("GET", "/healthz", healthz, "ops.healthz", auth=False),
        Route("GET", "/readyz", readyz, "ops.readyz", auth=False),
    ]


def _guarded(route: Route, limiter: RateLimiter) -> Handler:
    """The handler behind what its route requires: Tus-Resumable, then a token, then its rate limit."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if (route.tus and not ietf.is_ietf(request)
                and request.headers.get("Tus-Resumable", "").strip() != tus.TUS_VERSION):
            raise UploadError(ErrorCode.UNSUPPORTED_VERSION,
                              f"Tus-Resumable: {tus.TUS_VERSION} is required on tus requests")
        if route.auth:
            principal = await request.app[AUTHENTICATOR].principal(request.headers.get("Authorization"))
            request[OWNER], request[ALLOWANCE] = principal.owner, principal.allowance
            if route.limit is not None:
                limiter.check(route.limit, principal.owner)
        return await route.handler(request)

    return handler


def add_routes(app: web.Application, routes: list[Route], limiter: RateLimiter) -> None:
    """One aiohttp resource per route name, in table order (the router tries them in that order)."""
    resources: dict[str, tuple[str, web.Resource]] = {}
    for route in routes:
        if route.name not in resources:
            resources[route.name] = (route.path, app.router.add_resource(route.path, name=route.name))
        path, resource = resources[route.name]
        if path != route.path:
            raise ValueError(f"route {route.name} has two paths: {path} and {route.path}")
        resource.add_route(route.method, _guarded(route, limiter))


async def _tus_resumable_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Tus-Resumable"] = tus.TUS_VERSION


IN_FLIGHT = web.AppKey("in_flight", InFlight)


def setup_http(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[IN_FLIGHT] = InFlight()
    limiter = RateLimiter({PARTS_LIMIT: settings.rate_limit_parts, HEAD_LIMIT: settings.rate_limit_head})
    app.middlewares.extend([app[IN_FLIGHT].middleware, observability_middleware(settings.access_log),
                            cors_middleware(settings.cors_origins), error_middleware])
    app.on_response_prepare.append(_tus_resumable_header)
    app[DRAINING] = asyncio.Event()
    app.on_response_prepare.append(_close_when_draining)
    add_routes(app, route_table(settings.base_path), limiter)


async def _close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    """While draining, keep-alive clients (a proxy's upstream pool) are told to reconnect elsewhere."""
    if request.app[DRAINING].is_set():
        response.force_close()  # this side closes after the response...
        response.headers["Connection"] = "close"  # ...and says so (the headers are computed by now)


def ops_app(api: web.Application) -> web.Application:
    """The tiny app of the ops port; it reports on `api` (its probes, samplers and drain state)."""
    app = web.Application()
    app[API_APP] = api
    app.middlewares.append(error_middleware)
    add_routes(app, ops_route_table(), RateLimiter({}))
    return app
