"""The asyncpg pool, created once per process in the app factory."""

from __future__ import annotations

import asyncpg

from gateway.config import Settings


async def create_pool(settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        statement_cache_size=settings.db_statement_cache_size,
        command_timeout=30,
    )
    assert pool is not None
    return pool
