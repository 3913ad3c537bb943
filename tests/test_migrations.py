"""`gateway migrate`: in order, once, under an advisory lock."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from gateway.db.migrate import migrate, migration_files


async def test_concurrent_migrations_apply_each_file_once(stack) -> None:  # type: ignore[no-untyped-def]
    admin = await asyncpg.connect(stack.database_url)
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'create database "{name}"')
    try:
        url = stack.database_url.rsplit("/", 1)[0] + f"/{name}"
        results = await asyncio.gather(migrate(url), migrate(url), migrate(url))
        files = [p.name for p in migration_files()]
        # Exactly one of the racing instances applied everything; the others found nothing to do.
        assert sorted(len(r) for r in results) == [0, 0, len(files)]
        assert await migrate(url) == []
        conn = await asyncpg.connect(url)
        try:
            applied = [r["name"] for r in await conn.fetch("select name from schema_migrations order by name")]
            assert applied == files
            assert await conn.fetchval("select count(*) from uploads") == 0
        finally:
            await conn.close()
    finally:
        await admin.execute(f'drop database "{name}" with (force)')
        await admin.close()
