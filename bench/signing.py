"""Signing: presigned UploadPart URLs per second.

* the gateway's `POST /files/{id}/parts` with batches of `sign_batch` part numbers, `sign_clients`
  concurrent clients, each its own owner and upload (a sign request also records the batch in Postgres);
* Uppy Companion's `GET /s3/multipart/:uploadId/batch?key=&partNumbers=1,2,...` on uploads created with
  its `POST /s3/multipart`, same batches and clients;
* botocore's `generate_presigned_url("upload_part")` in a loop (one thread), and the gateway's own
  SigV4 signer in the same loop: the in-process limit of the HTTP endpoint.

Before measuring, one URL of each HTTP signer is used for a real 5 MiB PUT to SeaweedFS, so a signer
whose URLs do not work cannot win.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from bench import presign
from bench.common import Context, check_load, log, merge_loads, run_load
from bench.servers import companion_server

PROBE_PART = 5 * 1024 * 1024  # S3's minimum part size
PARTS_PER_UPLOAD = 1000


async def _gateway_uploads(ctx: Context, count: int) -> list[tuple[str, str]]:
    """(upload path, token) per client: uploads of 1,000 parts of 5 MiB, each from its own owner."""
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> tuple[str, str]:
            token = ctx.token(f"sign-{i}")
            async with http.post(f"{ctx.gw.url}/files", headers={
                    "Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0",
                    "Upload-Length": str(PARTS_PER_UPLOAD * PROBE_PART), "Upload-Part-Size": str(PROBE_PART)}) as r:
                assert r.status == 201, await r.text()
                return URL(r.headers["Location"]).path, token
        return await asyncio.gather(*(one(i) for i in range(count)))


async def _companion_uploads(base: str, count: int) -> list[tuple[str, str]]:
    """(uploadId, key) per client, from Companion's POST /s3/multipart (CreateMultipartUpload)."""
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> tuple[str, str]:
            async with http.post(f"{base}/s3/multipart", json={
                    "filename": f"sign-{i}.bin", "type": "application/octet-stream", "metadata": {}}) as r:
                body = await r.json()
                assert r.status == 200, body
                return body["uploadId"], body["key"]
        return await asyncio.gather(*(one(i) for i in range(count)))


async def _put_probe(url: str, extra_headers: dict[str, str] | None = None) -> tuple[int, str]:
    headers = {"Content-Length": str(PROBE_PART), **(extra_headers or {})}
    async with (aiohttp.ClientSession() as http,
                http.put(URL(url, encoded=True), data=os.urandom(PROBE_PART), headers=headers) as r):
        return r.status, (await r.text())[:300]


async def _probe_gateway(ctx: Context) -> tuple[int, str]:
    [(path, token)] = await _gateway_uploads(ctx, 1)
    async with (aiohttp.ClientSession() as http,
                http.post(f"{ctx.gw.url}{path}/parts", json={"parts": [1]},
                          headers={"Authorization": f"Bearer {token}"}) as r):
        part = (await r.json())["parts"][0]
    return await _put_probe(part["url"], part["headers"])


async def _probe_companion(base: str) -> tuple[int, str]:
    [(upload_id, key)] = await _companion_uploads(base, 1)
    async with (aiohttp.ClientSession() as http,
                http.get(f"{base}/s3/multipart/{upload_id}/batch", params={"key": key, "partNumbers": "1"}) as r):
        url = (await r.json())["presignedUrls"]["1"]
    return await _put_probe(url)


def _batches(batch: int) -> list[list[int]]:
    return [list(range(start, start + batch)) for start in range(1, PARTS_PER_UPLOAD + 1, batch)]


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    companion = ctx.peers["companion"].url
    log("signing: checking that each signer's URLs are accepted by SeaweedFS ...")
    probes = {"gateway": asyncio.run(_probe_gateway(ctx)), "companion": asyncio.run(_probe_companion(companion))}
    with companion_server(ctx.node_cache, ctx.gw.stack, ctx.work, sdk_default_checksums=True,
                          name="companion-sdk-defaults") as stock:
        probes["companion_sdk_defaults"] = asyncio.run(_probe_companion(stock.url))
    for name, (status, _body) in probes.items():
        log(f"  {name}: PUT of a 5 MiB part to its URL -> {status}")
    stock_status, stock_body = probes["companion_sdk_defaults"]
    if stock_status != 200:
        code = stock_body.split("<Code>")[1].split("<")[0] if "<Code>" in stock_body else stock_body[:80]
        ctx.note(f"Companion with its bundled AWS SDK's default checksum mode signs x-amz-checksum-crc32 of an "
                 f"empty body into part URLs; SeaweedFS answers {stock_status} {code} to a real part. The bench "
                 f"runs Companion with s3.awsClientOptions.requestChecksumCalculation = 'WHEN_REQUIRED'.")
    for name in ("gateway", "companion"):
        if probes[name][0] != 200:
            ctx.note(f"{name}'s presigned URL was refused by SeaweedFS: {probes[name][0]} {probes[name][1][:120]}")

    batches = _batches(s.sign_batch)
    gw_uploads = asyncio.run(_gateway_uploads(ctx, s.sign_clients))
    # Request i belongs to client i % clients (its own upload) and signs batch i // clients.
    gw_requests = [{"method": "POST", "path": f"{gw_uploads[i % s.sign_clients][0]}/parts",
                    "headers": {"Authorization": f"Bearer {gw_uploads[i % s.sign_clients][1]}",
                                "Content-Type": "application/json"},
                    "body": json.dumps({"parts": batches[i // s.sign_clients]})}
                   for i in range(s.sign_clients * len(batches))]
    comp_uploads = asyncio.run(_companion_uploads(companion, s.sign_clients))
    comp_requests = []
    for i in range(s.sign_clients * len(batches)):
        upload_id, key = comp_uploads[i % s.sign_clients]
        numbers = ",".join(map(str, batches[i // s.sign_clients]))
        comp_requests.append({"method": "GET", "headers": {},
                              "path": f"/s3/multipart/{quote(upload_id, safe='')}/batch"
                                      f"?key={quote(key, safe='')}&partNumbers={numbers}"})
    runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "companion": []}
    for round_ in range(s.rounds):
        log(f"signing: round {round_ + 1}/{s.rounds}: gateway, Companion ({s.sign_clients} clients, "
            f"{s.sign_batch} parts per request)")
        runs["gateway"].append(run_load(ctx.gw.url, gw_requests, s.sign_clients, s, ok=(200,),
                                        watch=ctx.watch(ctx.gw.process.pid)))
        runs["companion"].append(run_load(companion, comp_requests, s.sign_clients, s, ok=(200,),
                                          watch=ctx.watch(ctx.peers["companion"].pid)))
    result: dict[str, Any] = {"clients": s.sign_clients, "batch": s.sign_batch, "probes": probes}
    for name, label in (("gateway", "gateway POST /files/{id}/parts"), ("companion", "Companion GET .../batch")):
        merged = merge_loads(runs[name])
        check_load(ctx, f"signing, {label}", merged, (200,))
        merged["urls_per_s"] = merged["rps"] * s.sign_batch
        result[name] = merged
    log(f"signing: in-process loops of {s.presign_n} URLs (botocore, gateway signer)")
    loops = presign.bench_presign(s.presign_n)
    result["botocore"] = {"urls_per_s": loops["botocore_urls_per_s"]}
    result["signer"] = {"urls_per_s": loops["ours_urls_per_s"]}
    return result
