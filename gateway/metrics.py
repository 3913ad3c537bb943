"""Prometheus metrics of the instance.

With `serve --workers N` the parent points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the
workers start: every worker writes its values there and any worker's scrape (`exposition`) merges
them, so one scrape covers the whole instance. Gauges therefore say how workers combine: a sampled
fact of the database (the same whichever worker sampled it) takes the most recent sample, per-worker
quantities are summed over live workers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("gateway_requests_total", "HTTP requests", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "gateway_request_seconds", "HTTP request latency", ["route", "method"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
# The labelled children of the two request metrics by (route, method, status): `.labels()` validates and
# locks on every call, a dict lookup does not. Bounded (routes x methods x statuses is small, but the
# method and the route of an unmatched path come from the client); past the bound, `.labels()` as before.
# A child stays the one `.labels()` returns unless the metric is cleared or a child removed, which
# nothing does.
REQUEST_CHILDREN_MAX = 4096
_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """One answered request: gateway_requests_total and gateway_request_seconds."""
    key = (route, method, status)
    children = _request_children.get(key)
    if children is None:
        children = (REQUESTS.labels(route, method, str(status)), REQUEST_SECONDS.labels(route, method))
        if len(_request_children) < REQUEST_CHILDREN_MAX:
            _request_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


S3_SECONDS = Histogram("gateway_s3_call_seconds", "S3 call latency", ["operation"],
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))
S3_ERRORS = Counter("gateway_s3_errors_total", "S3 calls that failed", ["operation"])
BYTES_CONFIRMED = Counter("gateway_bytes_confirmed_total", "Bytes of parts recorded as held by S3", ["path"])
UPLOADS = Gauge("gateway_uploads", "Uploads by state (sampled from Postgres at most every few seconds)", ["state"],
                multiprocess_mode="mostrecent")
WEBHOOK_BACKLOG = Gauge("gateway_webhook_backlog", "Events not yet delivered to every webhook",
                        multiprocess_mode="mostrecent")
DB_POOL_SIZE = Gauge("gateway_db_pool_connections", "Connections in the asyncpg pools (all workers)", ["kind"],
                     multiprocess_mode="livesum")
# One series per live worker (a `pid` label in multi-worker mode).
WORKER_STARTED = Gauge("gateway_worker_start_time_seconds", "When a serving process started (Unix time)",
                       multiprocess_mode="liveall")
WORKER_RESTARTS = Counter("gateway_worker_restarts_total", "Workers started to replace one that died")
# gateway/http/connections.py: `header_timeout`, `max_connections` (closed at accept), `malformed_request`
# (aiohttp answered 400 to an unparsable request head and closed).
CONNECTIONS_CLOSED = Counter("gateway_connections_closed_total",
                             "Connections the gateway closed: a connection limit or a malformed request", ["reason"])


def exposition() -> bytes:
    """The text exposition: of every worker in multi-process mode, else of this process."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


@contextmanager
def timed_s3_call(operation: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        S3_ERRORS.labels(operation).inc()
        raise
    finally:
        S3_SECONDS.labels(operation).observe(time.perf_counter() - started)
