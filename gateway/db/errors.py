"""Postgres failures as the core's error type: an unreachable database is a retryable 503."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg

from gateway.core.errors import ErrorCode, UploadError

log = logging.getLogger(__name__)

# Everything that means "the database cannot answer right now": refused or broken connections,
# server shutdown/restart, a connection left in a bad state by a drop (InternalClientError).
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    # A primary demoted during a failover answers writes like this until the pool reconnects.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


@contextlib.asynccontextmanager
async def translate_db_errors() -> AsyncIterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        log.warning("database unavailable: %r", exc)
        raise UploadError(ErrorCode.DATABASE_UNAVAILABLE, "the database is unavailable; retry shortly",
                          retry_after=2) from exc
