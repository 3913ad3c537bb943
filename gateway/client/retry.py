"""When and how long to wait before trying a request again."""

from __future__ import annotations

import asyncio
import random

import aiohttp

ATTEMPTS = 5
BASE_DELAY = 0.5
MAX_DELAY = 15.0
# Failures of the network or of one server instance; another try usually succeeds.
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
# 423 is how the gateway throttles HEAD (tus clients restart on any other 4xx there).
RETRY_STATUSES = frozenset({408, 423, 429, 500, 502, 503, 504})


def backoff(attempt: int, retry_after: str | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (0-based).

    A server's Retry-After wins (capped). Otherwise exponential with jitter, so parallel workers
    that failed together do not retry in step.
    """
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after), MAX_DELAY)
    ceiling = min(MAX_DELAY, BASE_DELAY * 2.0**attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def describe(exc: BaseException) -> str:
    """aiohttp's timeouts and disconnects often have an empty message; name the type then."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
