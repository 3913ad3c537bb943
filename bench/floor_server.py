"""The floor of this stack for request rates: a bare aiohttp + asyncpg server that does one indexed
statement per request against the same PostgreSQL, and nothing else (no auth, no S3, no logging). It
runs on uvloop with a pool that sends no reset query on release, as the gateway does, so the floor is
this stack at its cheapest.

    python -m bench.floor_server --dsn postgresql://... --port 8090

* `HEAD /files/{id}`: one primary-key read of the gateway's own `uploads` row; 200 with Upload-Offset
  and Upload-Length (404 when there is no such row) — what the gateway's HEAD does minus everything
  but the database round trip.
* `POST /files`: one INSERT into a scratch table `bench_floor_uploads` (created on start); 201 with a
  Location — the database part of a creation, without the S3 CreateMultipartUpload.
"""

from __future__ import annotations

import argparse
import secrets
import sys

import asyncpg
import uvloop
from aiohttp import web

POOL = web.AppKey("pool", asyncpg.Pool)
TUS = {"Tus-Resumable": "1.0.0"}


async def head(request: web.Request) -> web.Response:
    row = await request.app[POOL].fetchrow(
        "select length, prefix_parts, part_size from uploads where id = $1", request.match_info["upload_id"])
    if row is None:
        return web.Response(status=404, headers=TUS)
    offset = min(row["prefix_parts"] * row["part_size"], row["length"] or 0)
    return web.Response(status=200, headers={**TUS, "Upload-Offset": str(offset),
                                             "Upload-Length": str(row["length"]), "Cache-Control": "no-store"})


async def create(request: web.Request) -> web.Response:
    length = int(request.headers.get("Upload-Length", "0"))
    upload_id = secrets.token_urlsafe(18)
    await request.app[POOL].execute("insert into bench_floor_uploads (id, length) values ($1, $2)",
                                    upload_id, length)
    return web.Response(status=201, headers={**TUS, "Location": f"/files/{upload_id}", "Upload-Offset": "0"})


async def _no_reset(connection: asyncpg.Connection) -> None:
    """No `RESET ALL` round trip on release (the server keeps no session state)."""


def make_app(dsn: str, pool_size: int) -> web.Application:
    app = web.Application()

    async def pool_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size, reset=_no_reset)
        await pool.execute("create table if not exists bench_floor_uploads ("
                           "id text primary key, length bigint, created_at timestamptz not null default now())")
        app[POOL] = pool
        yield
        await pool.close()

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_route("HEAD", "/files/{upload_id}", head)
    app.router.add_post("/files", create)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool", type=int, default=40, help="connections (the bench gives the gateway 40)")
    args = parser.parse_args()

    app = make_app(args.dsn, args.pool)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None,
                handle_signals=True, shutdown_timeout=1, loop=uvloop.new_event_loop())
    sys.exit(0)


if __name__ == "__main__":
    main()
