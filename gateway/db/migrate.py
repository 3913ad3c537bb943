"""`gateway migrate`: apply migrations/NNNN_*.sql in order, once, under an advisory lock.

Connects directly to Postgres (not through a transaction pooler): the session advisory lock makes two
instances starting together apply each file exactly once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

from gateway._data import data_path

log = logging.getLogger(__name__)

# The repository's migrations/, shipped in the wheel as package data (gateway/_data/migrations).
MIGRATIONS_DIR = data_path("migrations")
_LOCK_KEY = 0x6761746577617931  # "gateway1"


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.name[:4].isdigit())


async def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    conn = await asyncpg.connect(database_url, statement_cache_size=0)
    try:
        await conn.execute("select pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute("""
                create table if not exists schema_migrations (
                    name text primary key,
                    applied_at timestamptz not null default now()
                )""")
            done = {r["name"] for r in await conn.fetch("select name from schema_migrations")}
            applied = []
            for path in migration_files(directory):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("insert into schema_migrations (name) values ($1)", path.name)
                log.info("applied migration %s", path.name)
                applied.append(path.name)
            return applied
        finally:
            await conn.execute("select pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
