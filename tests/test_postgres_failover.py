"""A primary demoted during a failover refuses writes (`read-only transaction`): 503 + Retry-After."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.support.gateway import make_settings, running
from tests.support.tokens import TUS, auth


async def test_a_read_only_primary_answers_503_not_500(stack) -> None:  # type: ignore[no-untyped-def]
    role, password = f"demoted_{secrets.token_hex(4)}", secrets.token_hex(16)
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f"create role {role} login password '{password}'")
        await admin.execute(f"grant all on all tables in schema public to {role}")
        await admin.execute(f"grant all on all sequences in schema public to {role}")
        # What a demoted primary (a hot standby) does to every transaction.
        await admin.execute(f"alter role {role} set default_transaction_read_only = on")
        url = urlsplit(stack.database_url)
        host = url.netloc.rsplit("@", 1)[-1]
        demoted = urlunsplit(url._replace(netloc=f"{role}:{password}@{host}"))
        async with (running(make_settings(stack, database_url=demoted)) as gw,
                    gw.http.post(gw.files(), headers={**auth(), **TUS, "Upload-Length": "10"}) as response):
            assert response.status == 503, await response.text()
            assert response.headers["Retry-After"]
            assert (await response.json())["error"]["code"] == "database_unavailable"
    finally:
        await admin.execute(f"drop owned by {role}")
        await admin.execute(f"drop role if exists {role}")
        await admin.close()
