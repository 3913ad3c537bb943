"""Request rate: HEAD and create (POST) requests per second, p50/p99 latency, at each connection count,
for the gateway, @tus/server + @tus/s3-store, and the floor server (bench/floor_server.py).

HEAD walks through `head_uploads` existing uploads of each server (the gateway's owned by 256 different
owners, each request with its owner's token), each HEADed once beforehand so caches are warm (@tus/s3-store
keeps every upload's .info in memory after its first read); the floor reads the gateway's rows. POST creates uploads
of 1 MiB: the gateway and @tus/server each start an S3 multipart upload (and @tus/server writes its
.info object); the floor only INSERTs a row. Servers take turns within each round, so slow drifts of the
machine hit them alike. `s3` is the creation's own S3 call on its own: CreateMultipartUpload requests
signed once (header SigV4, valid 15 minutes) and replayed by the same load generator straight to
SeaweedFS, so "gateway ÷ s3" says how close a creation comes to the S3 call it cannot avoid.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from yarl import URL

from bench.common import Context, check_load, log, merge_loads, run_load
from gateway.s3.sigv4 import Credentials, SigV4Signer

OWNERS = 256
CREATE_LENGTH = 1024 * 1024
TARGETS = ("gateway", "tus", "floor")
LABELS = {"gateway": "gateway", "tus": "@tus/server", "floor": "floor", "s3": "raw CreateMultipartUpload"}
RAW_CREATES = 256  # distinct keys the replayed CreateMultipartUpload requests name


async def _create_many(count: int, make) -> list[str]:  # type: ignore[no-untyped-def]
    """Paths of `count` new uploads, created 32 at a time."""
    gate = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> str:
            url, headers = make(i)
            async with gate, http.post(url, headers=headers) as r:
                assert r.status == 201, (r.status, await r.text())
                return URL(r.headers["Location"]).path
        return await asyncio.gather(*(one(i) for i in range(count)))


async def _head_all(targets: list[tuple[str, dict[str, str]]]) -> None:
    gate = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as http:
        async def one(url: str, headers: dict[str, str]) -> None:
            async with gate, http.head(url, headers=headers) as r:
                assert r.status == 200, (url, r.status)
        await asyncio.gather(*(one(url, headers) for url, headers in targets))


def _raw_creates(ctx: Context) -> tuple[str, list[dict[str, Any]]]:
    """The S3 endpoint and signed CreateMultipartUpload requests for the load generator."""
    stack = ctx.gw.stack
    signer = SigV4Signer(Credentials(stack.s3_access_key_id, stack.s3_secret_access_key), stack.s3_region,
                         stack.s3_endpoint_url)
    requests = []
    for i in range(RAW_CREATES):
        key = f"bench-raw/{i:04d}"
        query = {"uploads": ""}
        headers = signer.sign_headers("POST", stack.s3_bucket, key, query=query,
                                      headers={"Content-Type": "application/octet-stream"})
        url = URL(signer.url(stack.s3_bucket, key, query), encoded=True)
        del headers["host"]  # the load generator sends the same Host line itself
        requests.append({"method": "POST", "path": url.raw_path_qs, "headers": headers})
    return stack.s3_endpoint_url, requests


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    tokens = [ctx.token(f"rate-{i}") for i in range(OWNERS)]
    tus = ctx.peers["tus"].url
    log(f"request rate: creating {s.head_uploads} uploads on the gateway and on @tus/server to HEAD")
    gw_paths = asyncio.run(_create_many(s.head_uploads, lambda i: (f"{ctx.gw.url}/files", {
        "Authorization": f"Bearer {tokens[i % OWNERS]}", "Tus-Resumable": "1.0.0",
        "Upload-Length": str(CREATE_LENGTH)})))
    tus_paths = asyncio.run(_create_many(s.head_uploads, lambda i: (f"{tus}/files", {
        "Tus-Resumable": "1.0.0", "Upload-Length": str(CREATE_LENGTH)})))
    tus_head = {"Tus-Resumable": "1.0.0"}
    log("request rate: one HEAD of each upload first (@tus/server caches each upload's .info after it)")
    asyncio.run(_head_all([(f"{ctx.gw.url}{p}", {**tus_head, "Authorization": f"Bearer {tokens[i % OWNERS]}"})
                           for i, p in enumerate(gw_paths)] + [(f"{tus}{p}", tus_head) for p in tus_paths]))
    requests = {
        ("HEAD", "gateway"): [{"method": "HEAD", "path": p, "headers": {
            **tus_head, "Authorization": f"Bearer {tokens[i % OWNERS]}"}} for i, p in enumerate(gw_paths)],
        ("HEAD", "tus"): [{"method": "HEAD", "path": p, "headers": tus_head} for p in tus_paths],
        ("HEAD", "floor"): [{"method": "HEAD", "path": p, "headers": tus_head} for p in gw_paths],
        ("POST", "gateway"): [{"method": "POST", "path": "/files", "headers": {
            **tus_head, "Authorization": f"Bearer {t}", "Upload-Length": str(CREATE_LENGTH)}} for t in tokens],
        ("POST", "tus"): [{"method": "POST", "path": "/files", "headers": {
            **tus_head, "Upload-Length": str(CREATE_LENGTH)}}],
        ("POST", "floor"): [{"method": "POST", "path": "/files", "headers": {
            **tus_head, "Upload-Length": str(CREATE_LENGTH)}}],
    }
    s3_url, requests[("POST", "s3")] = _raw_creates(ctx)
    urls = {"gateway": ctx.gw.url, "tus": tus, "floor": ctx.peers["floor"].url, "s3": s3_url}
    pids = {"gateway": ctx.gw.process.pid, "tus": ctx.peers["tus"].pid, "floor": ctx.peers["floor"].pid,
            "s3": ctx.seaweedfs_pids[0] if ctx.seaweedfs_pids else ctx.gw.process.pid}
    ok = {("HEAD", t): (200,) for t in TARGETS} | {("POST", t): (201,) for t in TARGETS} | {("POST", "s3"): (200,)}
    result: dict[str, Any] = {}
    for method in ("HEAD", "POST"):
        targets = (*TARGETS, "s3") if method == "POST" else TARGETS
        for connections in s.connections:
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
            for round_ in range(s.rounds):
                log(f"request rate: {method} at {connections} connections, round {round_ + 1}/{s.rounds}")
                for target in targets:
                    runs[target].append(run_load(urls[target], requests[(method, target)], connections, s,
                                                 ok=ok[method, target], watch=ctx.watch(pids[target])))
            for target in targets:
                merged = merge_loads(runs[target])
                check_load(ctx, f"{method} at {connections} connections on {LABELS[target]}", merged,
                           ok[method, target])
                result[f"{method} {connections} {target}"] = merged
                cpu = merged["cpu_cores"]
                log(f"  {LABELS[target]:>12}: {merged['rps']:8.0f} req/s  p50 {merged['p50_ms']:7.1f} ms  "
                    f"p99 {merged['p99_ms']:7.1f} ms   CPU (cores) server {cpu.get('server', 0):.2f} "
                    f"postgres {cpu.get('postgres', 0):.2f} seaweedfs {cpu.get('seaweedfs', 0):.2f}")
    return result
