"""The asyncpg pool, created once per process in the app factory."""

from __future__ import annotations

import asyncpg

from gateway.config import Settings


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Released connections are not reset: asyncpg's default sends `RESET ALL; UNLISTEN *; ...` on every
    release, one more round trip per query. The gateway keeps no session state on pool connections (no
    SET, LISTEN or session advisory lock; `gateway migrate` uses a connection of its own), and asyncpg
    still rolls back a transaction left open before it calls this."""


async def create_pool(settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        statement_cache_size=settings.db_statement_cache_size,
        command_timeout=30,
        reset=_keep_session,
    )
    assert pool is not None
    return pool
