"""Request ids, access logs, Prometheus metrics and per-owner rate limits."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.core.errors import ErrorCode, UploadError
from gateway.http.keys import API_APP, METRICS_SAMPLERS
from gateway.metrics import exposition, observe_request

REQUEST_ID = contextvars.ContextVar("request_id", default="-")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
access_log = logging.getLogger("gateway.access")
SAMPLE_TIMEOUT = 2.0


def _route(request: web.Request) -> str:
    route = request.match_info.route
    return route.name or ("unmatched" if route.resource is None else route.resource.canonical)


class InFlight:
    """Counts requests being handled, so a shutdown can wait for them (aiohttp's own graceful
    shutdown stops reading request bodies, which would cut every PATCH in flight). The API app's request
    middleware (gateway/http/routes.py) calls `started` and `finished` around everything else it does."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def started(self) -> None:
        self.count += 1
        self.idle.clear()

    def finished(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


def new_request_id() -> str:
    """What `uuid.uuid4().hex` returns (random version-4 UUID, 32 hex digits), without building a UUID."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


def start_request(request: web.Request) -> str:
    """The request's id (the client's X-Request-Id when it is safe to echo, else a new one), set for the
    log lines of the request."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else new_request_id()
    REQUEST_ID.set(request_id)
    return request_id


def finish_request(request: web.Request, response: web.StreamResponse, request_id: str, elapsed: float,
                   log_requests: bool) -> None:
    """An answered request: its X-Request-Id header, its metrics and its access-log line."""
    response.headers["X-Request-Id"] = request_id
    route = _route(request)
    method = request.method
    status = response.status
    observe_request(route, method, status, elapsed)
    if log_requests and access_log.isEnabledFor(logging.INFO):
        # What `access_log.info(...)` would log, with the caller's place read off this frame instead
        # of looked up by walking the stack. The path only: query strings may carry signatures.
        frame = sys._getframe()
        code = frame.f_code
        access_log.handle(access_log.makeRecord(
            access_log.name, logging.INFO, code.co_filename, frame.f_lineno, "%s %s %d %.1fms",
            (method, request.path, status, elapsed * 1000), None, code.co_name,
            {"route": route, "status": status, "duration_ms": round(elapsed * 1000, 1)}))


def api_app(request: web.Request) -> web.Application:
    """The API app: the request's own, or the one the ops app (GATEWAY_METRICS_PORT) reports on."""
    return request.app.get(API_APP, request.app)


async def metrics(request: web.Request) -> web.Response:
    """Served on the ops port only (never the API port); the samplers cache their SQL for a few seconds."""
    for sample in api_app(request).get(METRICS_SAMPLERS, ()):
        # A dependency is down or slow: serve the last samples and the process metrics anyway.
        with contextlib.suppress(UploadError, TimeoutError):
            await asyncio.wait_for(sample(), SAMPLE_TIMEOUT)
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class TokenBuckets:
    """Per-owner token buckets of one process (with several instances each keeps its own)."""

    def __init__(self, rate: float, burst: float, max_owners: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_owners = max_owners
        self.buckets: OrderedDict[Any, tuple[float, float]] = OrderedDict()

    def take(self, key: Any) -> float:
        """0 when allowed, else the seconds until a token is available."""
        now = time.monotonic()
        tokens, last = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > self.max_owners:
            self.buckets.popitem(last=False)
        return wait


@dataclass(frozen=True)
class LimitBucket:
    """A per-owner rate limit a route can join, and how a refusal answers."""

    name: str
    code: ErrorCode
    message: str


# Sign/confirm/list answer 429; HEAD answers 423 (tus-js-client retries 423 but restarts the upload
# from byte 0 on other HEAD errors).
PARTS_LIMIT = LimitBucket("parts", ErrorCode.RATE_LIMITED, "too many requests; slow down")
HEAD_LIMIT = LimitBucket("head", ErrorCode.UPLOAD_LOCKED, "too many HEAD requests; retry shortly")


class RateLimiter:
    """Token buckets per (limit, owner); a limit with rate 0 is off."""

    def __init__(self, rates: dict[LimitBucket, float]) -> None:
        self.buckets = {limit: TokenBuckets(rate, 2 * rate) for limit, rate in rates.items() if rate}

    def enforces(self, limit: LimitBucket) -> bool:
        """Whether `check` can refuse anything for this limit (the rates are fixed at construction)."""
        return limit in self.buckets

    def check(self, limit: LimitBucket, owner: Any) -> None:
        buckets = self.buckets.get(limit)
        if buckets is None:
            return
        wait = buckets.take(owner)
        if wait:
            raise UploadError(limit.code, limit.message, retry_after=math.ceil(wait))
