"""Prometheus metrics of one process (with `serve --workers N`, each worker exposes its own)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("gateway_requests_total", "HTTP requests", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "gateway_request_seconds", "HTTP request latency", ["route", "method"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
S3_SECONDS = Histogram("gateway_s3_call_seconds", "S3 call latency", ["operation"],
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))
S3_ERRORS = Counter("gateway_s3_errors_total", "S3 calls that failed", ["operation"])
BYTES_CONFIRMED = Counter("gateway_bytes_confirmed_total", "Bytes of parts recorded as held by S3", ["path"])
UPLOADS = Gauge("gateway_uploads", "Uploads by state (sampled at scrape time)", ["state"])
WEBHOOK_BACKLOG = Gauge("gateway_webhook_backlog", "Events not yet delivered to every webhook")
DB_POOL_SIZE = Gauge("gateway_db_pool_connections", "Connections in the asyncpg pool", ["kind"])


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
