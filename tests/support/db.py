"""Reading what Postgres holds about an upload."""

from __future__ import annotations

from typing import Any

import asyncpg

UPLOAD_ROW = "select * from uploads where id = $1"


async def upload_row(db: asyncpg.Connection | asyncpg.Pool | str, upload: str) -> asyncpg.Record | None:
    """The `uploads` row of the upload with id `upload` (None when there is none).

    `db` is an open connection or pool, or a DSN (a connection is opened for this one read)."""
    if isinstance(db, str):
        conn = await asyncpg.connect(db)
        try:
            return await conn.fetchrow(UPLOAD_ROW, upload)
        finally:
            await conn.close()
    row: Any = await db.fetchrow(UPLOAD_ROW, upload)
    return row
