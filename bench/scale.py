"""Scale: `scale_uploads` (1,000) simulated clients at once, each its own owner, through one aiohttp
connection pool of `scale_connections`. Each client creates an upload of `scale_part` bytes (64 KiB: a
single, final part), signs part 1, waits until every client has done the same (so all uploads are in
flight at once: checked in Postgres), then PUTs its part straight to S3 and confirms it.

Afterwards Postgres must hold every upload as `completed` with offset = length, and S3 an object of the
right size under each upload's key.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import aiohttp
import asyncpg
from yarl import URL

from bench.common import Context, log, percentile
from bench.procstat import Meter
from gateway.embedded import s3_client

TIMEOUT = aiohttp.ClientTimeout(total=300)
ATTEMPTS = 6


class Failed(Exception):
    pass


async def _call(http: aiohttp.ClientSession, method: str, url: str | URL, ok: int, stats: dict[str, int],
                **kwargs: Any) -> tuple[aiohttp.ClientResponse, bytes]:
    """One request; 503 and 409 part_not_visible (both documented as retryable) are retried."""
    for attempt in range(ATTEMPTS):
        async with http.request(method, url, **kwargs) as response:
            body = await response.read()
            if response.status == ok:
                return response, body
            if response.status in (503, 409) and attempt + 1 < ATTEMPTS and b"part_confirmed" not in body:
                stats["retries"] += 1
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            raise Failed(f"{method} {URL(url).path}: {response.status} {body[:200]!r}")
    raise AssertionError("unreachable")


async def _run(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    count = s.scale_uploads
    tokens = [ctx.token(f"scale-{i}") for i in range(count)]
    data = os.urandom(s.scale_part)
    arrived = 0
    all_ready = asyncio.Event()
    in_flight: dict[str, float] = {}
    stats = {"retries": 0}
    db = await asyncpg.connect(ctx.gw.stack.database_url)

    async def arrive() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == count:
            in_flight["active_rows"] = await db.fetchval(
                "select count(*) from uploads where owner_sub like 'scale-%' and state = 'active'")
            in_flight["at"] = time.perf_counter()
            all_ready.set()

    async def client(http: aiohttp.ClientSession, i: int) -> dict[str, Any]:
        auth = {"Authorization": f"Bearer {tokens[i]}"}
        t0 = time.perf_counter()
        try:
            response, _ = await _call(http, "POST", f"{ctx.gw.url}/files", 201, stats, headers={
                **auth, "Tus-Resumable": "1.0.0", "Upload-Length": str(s.scale_part)})
            location = response.headers["Location"]
            _, body = await _call(http, "POST", f"{location}/parts", 200, stats, headers=auth,
                                  json={"parts": [1]})
            part = json.loads(body)["parts"][0]
        finally:
            t1 = time.perf_counter()
            await arrive()
        await all_ready.wait()
        t2 = time.perf_counter()
        await _call(http, "PUT", URL(part["url"], encoded=True), 200, stats, data=data,
                    headers={**part["headers"], "Content-Length": str(len(data))})
        response, _ = await _call(http, "PUT", f"{location}/parts/1", 204, stats, headers=auth)
        t3 = time.perf_counter()
        return {"id": location.rsplit("/", 1)[1], "offset": int(response.headers.get("Upload-Offset", -1)),
                "create_sign_s": t1 - t0, "put_confirm_s": t3 - t2, "done_at": t3}

    try:
        started = time.perf_counter()
        connector = aiohttp.TCPConnector(limit=s.scale_connections)
        async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as http:
            outcomes = await asyncio.gather(*(client(http, i) for i in range(count)), return_exceptions=True)
        finished = time.perf_counter()
        done = [o for o in outcomes if isinstance(o, dict)]
        errors = [repr(o) for o in outcomes if not isinstance(o, dict)]
        ids = [o["id"] for o in done]
        # Completion normally happens inside the confirm; give a background completion a moment.
        deadline = time.monotonic() + 60
        while True:
            rows = await db.fetch("select id, state, length, least(prefix_parts * part_size, length) as offset, "
                                  "s3_key from uploads where id = any($1::text[])", ids)
            if all(r["state"] == "completed" for r in rows) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        await db.close()
    completed = [r for r in rows if r["state"] == "completed" and r["offset"] == r["length"] == s.scale_part]
    st = ctx.gw.stack
    s3 = s3_client(st.s3_endpoint_url, st.s3_access_key_id, st.s3_secret_access_key, timeout=60)
    sizes: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=st.s3_bucket, Prefix="uploads/"):
        sizes.update((o["Key"], o["Size"]) for o in page.get("Contents", []))
    objects = sum(1 for r in rows if sizes.get(r["s3_key"]) == s.scale_part)
    ready_at = in_flight.get("at", finished)
    create_sign = sorted(o["create_sign_s"] for o in done)
    put_confirm = sorted(o["put_confirm_s"] for o in done)
    return {
        "uploads": count, "connections": s.scale_connections, "part": s.scale_part,
        "clients_ok": len(done), "errors": len(errors), "error_sample": errors[:3], "retries": stats["retries"],
        "active_at_once": int(in_flight.get("active_rows", 0)),
        "create_sign_wall_s": ready_at - started, "put_confirm_wall_s": finished - ready_at,
        "total_s": finished - started,
        "create_sign_p50_ms": percentile(create_sign, 50) * 1000,
        "create_sign_p99_ms": percentile(create_sign, 99) * 1000,
        "put_confirm_p50_ms": percentile(put_confirm, 50) * 1000,
        "put_confirm_p99_ms": percentile(put_confirm, 99) * 1000,
        "confirm_offsets_ok": sum(1 for o in done if o["offset"] == s.scale_part),
        "completed_rows": len(completed), "objects_ok": objects,
    }


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    log(f"scale: {s.scale_uploads} uploads of {s.scale_part // 1024} KiB in flight at once "
        f"({s.scale_connections} connections)")
    meter = Meter({"gateway": ctx.gw.process.pid})
    with meter.phase() as usage:
        result = asyncio.run(_run(ctx))
    result["gateway_cpu_s"] = usage["gateway"].cpu_s
    result["gateway_peak_rss_mib"] = usage["gateway"].peak_rss_mib
    n = s.scale_uploads
    checks = {
        "all clients finished": result["clients_ok"] == n,
        f"{n} active at once": result["active_at_once"] == n,
        "every confirm answered Upload-Offset = length": result["confirm_offsets_ok"] == n,
        f"{n} completed rows with offset = length": result["completed_rows"] == n,
        f"{n} objects of the right size": result["objects_ok"] == n,
    }
    result["checks"] = checks
    for what, passed in checks.items():
        if not passed:
            ctx.note(f"scale: NOT {what} (clients ok {result['clients_ok']}, active at once "
                     f"{result['active_at_once']}, completed {result['completed_rows']}, objects "
                     f"{result['objects_ok']}; errors {result['error_sample']})")
    log(f"  all {n} created+signed in {result['create_sign_wall_s']:.1f} s, PUT+confirmed in "
        f"{result['put_confirm_wall_s']:.1f} s; completed rows {result['completed_rows']}, "
        f"objects {result['objects_ok']}")
    return result
