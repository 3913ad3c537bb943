"""The route table: every route of the gateway with what it requires, as data a reader can scan
(docs/architecture.md §1), and the middleware every request passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.core.errors import ErrorCode, UploadError
from gateway.http import companion, ietf, openapi, parts, s3_api, tus
from gateway.http.common import UPLOAD_ID_PATTERN
from gateway.http.cors import cors_headers
from gateway.http.errors import error_middleware, response_for_error
from gateway.http.keys import ALLOWANCE, API_APP, AUTHENTICATOR, DRAINING, OWNER, READINESS_CHECKS, SETTINGS
from gateway.http.observability import (
    HEAD_LIMIT,
    PARTS_LIMIT,
    InFlight,
    LimitBucket,
    RateLimiter,
    api_app,
    finish_request,
    metrics,
    start_request,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHOD_OVERRIDE = "X-HTTP-Method-Override"


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
    # tus's X-HTTP-Method-Override: a POST to this path naming this method *is* this route, resolved
    # before anything else looks at the request (`resolve_method_override`).
    override: bool = False


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
    """Preflights (OPTIONS) never need a token or Tus-Resumable; the request middleware adds their CORS headers."""
    upload = f"{base}/{{upload_id:{UPLOAD_ID_PATTERN}}}"
    s3_upload = f"{s3_base}/multipart/{{upload_id:{UPLOAD_ID_PATTERN}}}"
    return [
        Route("GET", "/healthz", healthz, "public.healthz", auth=False),
        Route("GET", "/readyz", readyz, "public.readyz", auth=False),
        # The OpenAPI 3.1 document of the JSON routes below (gateway/http/openapi.py), public like the probes.
        Route("GET", "/openapi.json", openapi.serve, "public.openapi", auth=False),
        # No /metrics here: it is served on the ops port only (ops_route_table), so the API port answers 404.
        # tus and the IETF draft share the collection and upload URLs.
        Route("OPTIONS", base, ietf.by_protocol(tus.options, ietf.options), "tus.collection", auth=False),
        Route("POST", base, ietf.by_protocol(tus.create, ietf.create), "tus.collection", tus=True),
        Route("OPTIONS", upload, ietf.by_protocol(tus.options, ietf.options), "tus.upload", auth=False),
        # `override`: POST + X-HTTP-Method-Override: HEAD|DELETE|PATCH is that row, with exactly its checks
        # (and protocol dispatch); any other POST here is 405.
        Route("HEAD", upload, ietf.by_protocol(tus.head, ietf.head), "tus.upload", tus=True, limit=HEAD_LIMIT,
              override=True),
        Route("DELETE", upload, ietf.by_protocol(tus.delete, ietf.cancel), "tus.upload", tus=True, override=True),
        Route("PATCH", upload, ietf.by_protocol(tus.patch, ietf.append), "tus.upload", tus=True, override=True),
        # Downloads may be visited by a browser, so they do not demand Tus-Resumable.
        Route("GET", upload, tus.download, "download"),
        # PutObject of Uppy 6's single-request uploads (files up to its multipart threshold).
        Route("PUT", upload, s3_api.put_object, "s3api.put"),
        # The presigned-parts extension (the direct path).
        Route("OPTIONS", f"{upload}/parts", tus.options, "parts.collection", auth=False),
        Route("POST", f"{upload}/parts", parts.sign, "parts.collection", limit=PARTS_LIMIT),
        Route("PUT", f"{upload}/parts", parts.confirm_many, "parts.collection", limit=PARTS_LIMIT),
        Route("GET", f"{upload}/parts", parts.list_parts, "parts.collection", limit=PARTS_LIMIT),
        Route("OPTIONS", f"{upload}/parts/{{number}}", tus.options, "parts.one", auth=False),
        Route("PUT", f"{upload}/parts/{{number}}", parts.confirm_one, "parts.one", limit=PARTS_LIMIT),
        # S3-shaped routes for Uppy 6's @uppy/aws-s3 `signRequest` (clients/js `uppySignRequest`). `/files/s3`
        # never matches an upload id (16+ characters).
        Route("OPTIONS", f"{base}/s3", tus.options, "s3api.create", auth=False),
        Route("POST", f"{base}/s3", s3_api.create, "s3api.create"),
        Route("OPTIONS", f"{upload}/s3", tus.options, "s3api.upload", auth=False),
        Route("GET", f"{upload}/s3", s3_api.list_parts, "s3api.upload", limit=PARTS_LIMIT),
        Route("POST", f"{upload}/s3", s3_api.complete, "s3api.upload", limit=PARTS_LIMIT),
        Route("DELETE", f"{upload}/s3", s3_api.abort, "s3api.upload", limit=PARTS_LIMIT),
        Route("OPTIONS", f"{upload}/s3/urls", tus.options, "s3api.urls", auth=False),
        Route("POST", f"{upload}/s3/urls", s3_api.part_urls, "s3api.urls", limit=PARTS_LIMIT),
        # Uppy Companion's S3 multipart routes (@uppy/aws-s3 5).
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


# Headers a request may carry once: with two, which one counts would depend on who reads them (tus,
# the IETF draft, the token, the method override). aiohttp's parser already refuses two Content-Length or
# Content-Type lines; they are listed so the rule holds whichever parser runs.
SINGLE_HEADERS = (
    "Tus-Resumable", "Upload-Length", "Upload-Defer-Length", "Upload-Offset", "Upload-Metadata", "Upload-Checksum",
    "Upload-Concat", "Upload-Part-Size", "Upload-Part-Checksum", "Upload-Complete", "Upload-Incomplete",
    "Upload-Draft-Interop-Version",
    "Content-Disposition", "Authorization", METHOD_OVERRIDE, "Content-Length", "Content-Type",
)


# The same names as they appear in `request.raw_headers`, lower-cased: a token is ASCII, and a request head
# with another byte in a header name never gets past aiohttp's parser.
_SINGLE_RAW = frozenset(name.lower().encode() for name in SINGLE_HEADERS)


def refuse_repeated_headers(request: web.Request) -> None:
    """400 `invalid_request` naming the first protocol header (in SINGLE_HEADERS order) that appears more
    than once. Usually none does: one pass over the raw header names shows it, the per-name look-up runs
    only when some protocol header name repeats."""
    seen: set[bytes] = set()
    for raw_name, _ in request.raw_headers:
        lowered = raw_name.lower()
        if lowered in _SINGLE_RAW:
            if lowered in seen:
                break
            seen.add(lowered)
    else:
        return
    for name in SINGLE_HEADERS:
        if len(request.headers.getall(name, ())) > 1:
            raise UploadError(ErrorCode.INVALID_REQUEST, f"the {name} header appears more than once",
                              details={"header": name})


def _guarded(route: Route, limiter: RateLimiter) -> Handler:
    """The handler behind what its route requires: one copy of each protocol header, Tus-Resumable, then a
    token, then its rate limit (when that limit is on)."""
    needs_tus, needs_token, route_handler = route.tus, route.auth, route.handler
    limit = route.limit if route.limit is not None and limiter.enforces(route.limit) else None

    async def handler(request: web.Request) -> web.StreamResponse:
        refuse_repeated_headers(request)
        if (needs_tus and not ietf.is_ietf(request)
                and request.headers.get("Tus-Resumable", "").strip() != tus.TUS_VERSION):
            raise UploadError(ErrorCode.UNSUPPORTED_VERSION,
                              f"Tus-Resumable: {tus.TUS_VERSION} is required on tus requests")
        if needs_token:
            principal = await request.app[AUTHENTICATOR].principal(request.headers.get("Authorization"))
            request[OWNER], request[ALLOWANCE] = principal.owner, principal.allowance
            if limit is not None:
                limiter.check(limit, principal.owner)
        return await route_handler(request)

    return handler


def _overridden(methods: dict[str, Handler]) -> Handler:
    """The POST of a path with `override` routes. `resolve_method_override` has already turned a POST naming
    one of them into that method, so what still arrives as POST named none: 405, like an unknown method."""

    async def handler(request: web.Request) -> web.StreamResponse:
        route = methods.get(request.method)
        if route is None:
            raise web.HTTPMethodNotAllowed(request.method, sorted(methods))
        return await route(request)

    return handler


def add_routes(app: web.Application, routes: list[Route], limiter: RateLimiter) -> None:
    """One aiohttp resource per route name, in table order (the router tries them in that order); a
    resource with `override` routes also takes POST for them."""
    resources: dict[str, tuple[str, web.Resource]] = {}
    overrides: dict[str, dict[str, Handler]] = {}
    for route in routes:
        if route.name not in resources:
            resources[route.name] = (route.path, app.router.add_resource(route.path, name=route.name))
        path, resource = resources[route.name]
        if path != route.path:
            raise ValueError(f"route {route.name} has two paths: {path} and {route.path}")
        guarded = _guarded(route, limiter)
        resource.add_route(route.method, guarded)
        if route.override:
            overrides.setdefault(route.name, {})[route.method] = guarded
    for name, methods in overrides.items():
        resources[name][1].add_route("POST", _guarded(Route("POST", resources[name][0], _overridden(methods), name,
                                                            auth=False), limiter))
    app[OVERRIDES] = {name: frozenset(methods) for name, methods in overrides.items()}


def resolve_method_override(request: web.Request) -> web.Request:
    """tus's X-HTTP-Method-Override, resolved once before anything depends on the method: a POST naming
    an `override` route of its path becomes that request (`clone(method=...)`), so the metrics, the access
    log, CORS, the route's own checks (Tus-Resumable, token, rate limit) and the protocol dispatch all see
    the method the client meant, exactly as if it had sent it. Only the method changes: the same headers
    pick tus or the IETF draft as they do on a direct request. Anything else (no override route there, an
    unknown or repeated method name) stays a POST, which that route table row answers (405 or 400)."""
    if request.method == "POST" and METHOD_OVERRIDE in request.headers:
        methods = request.app.get(OVERRIDES, {}).get(request.match_info.route.name or "")
        names = request.headers.getall(METHOD_OVERRIDE)
        if methods and len(names) == 1 and (method := names[0].strip().upper()) in methods:
            return request.clone(method=method)
    return request


def request_middleware(in_flight: InFlight, log_requests: bool, cors_origins: tuple[str, ...]) -> Any:
    """The API app's one middleware; each step is a function of the module that owns its rule, run in this
    order: the method override (`resolve_method_override`, so everything after sees the effective method),
    the in-flight count around all the rest, the request id and the clock, the handler with its errors
    rendered (`response_for_error`), the CORS headers on every response, errors included (`cors_headers`),
    then X-Request-Id, the metrics and the access log (`finish_request`). A single layer because each
    aiohttp middleware costs a partial and a coroutine frame per request. An exception that is not an
    error (an HTTPException below 400, a cancellation) passes through unrecorded, as it always has."""
    add_cors_headers = cors_headers(cors_origins)  # None without GATEWAY_CORS_ORIGINS: nothing to add
    perf_counter = time.perf_counter

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            request = resolve_method_override(request)
        in_flight.started()
        try:
            request_id = start_request(request)
            started = perf_counter()
            try:
                response = await handler(request)
            except Exception as exc:
                rendered = response_for_error(request, exc)
                if rendered is None:
                    raise
                response = rendered
            if add_cors_headers is not None:
                add_cors_headers(request, response)
            finish_request(request, response, request_id, perf_counter() - started, log_requests)
            return response
        finally:
            in_flight.finished()

    return middleware


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every response of the API app, aiohttp's own refusals included (one signal receiver, not two:
    each costs a coroutine per response): `Tus-Resumable`, and while draining, keep-alive clients (a
    proxy's upstream pool) are told to reconnect elsewhere."""
    response.headers["Tus-Resumable"] = tus.TUS_VERSION
    if request.app[DRAINING].is_set():
        response.force_close()  # this side closes after the response...
        response.headers["Connection"] = "close"  # ...and says so (the headers are computed by now)


IN_FLIGHT = web.AppKey("in_flight", InFlight)
# Per resource name: the methods a POST with X-HTTP-Method-Override may name there.
OVERRIDES = web.AppKey("method_overrides", dict[str, frozenset[str]])


def setup_http(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[IN_FLIGHT] = InFlight()
    limiter = RateLimiter({PARTS_LIMIT: settings.rate_limit_parts, HEAD_LIMIT: settings.rate_limit_head})
    app.middlewares.append(request_middleware(app[IN_FLIGHT], settings.access_log, settings.cors_origins))
    app[DRAINING] = asyncio.Event()
    app.on_response_prepare.append(_on_response_prepare)
    add_routes(app, route_table(settings.base_path), limiter)


def ops_app(api: web.Application) -> web.Application:
    """The tiny app of the ops port; it reports on `api` (its probes, samplers and drain state)."""
    app = web.Application()
    app[API_APP] = api
    app.middlewares.append(error_middleware)
    add_routes(app, ops_route_table(), RateLimiter({}))
    return app
