"""Throughput and cost of one upload of `upload_size` bytes (1 GiB in a full run), one at a time:

* direct path: gateway.client.DirectUploader with 1, 4 and 8 parts in flight (bytes go to S3);
* raw presigned PUTs with the same parallelism, the physical limit of this machine and SeaweedFS:
  botocore CreateMultipartUpload, presign every part, PUT the parts (the same aiohttp reader the
  direct client uses), CompleteMultipartUpload — no gateway at all;
* proxy path: tus-js-client (Node) PATCHing through the gateway, chunkSize `chunk_size`;
* @tus/server + @tus/s3-store with the same tus-js-client and chunk size, and the gateway's part size.

For each: MB/s (10^6 bytes/s, wall time of the upload), the serving process's CPU seconds per GiB and
its peak RSS during the upload (sampled every 50 ms from /proc), and a check that S3 holds an object of
the right size.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import asyncpg
from yarl import URL

from bench.common import Context, GiB, log
from bench.procstat import Meter
from gateway.client import DirectUploader
from gateway.embedded import s3_client

READ_CHUNK = 1024 * 1024
S3_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)


def make_file(path: Path, size: int) -> None:
    block = os.urandom(8 * 1024 * 1024)
    with path.open("wb") as out:
        written = 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            out.write(chunk)
            written += len(chunk)


def _s3(ctx: Context) -> Any:
    st = ctx.gw.stack
    client = s3_client(st.s3_endpoint_url, st.s3_access_key_id, st.s3_secret_access_key, timeout=120)
    return client


def _object_size(ctx: Context, key: str) -> int | None:
    try:
        return int(_s3(ctx).head_object(Bucket=ctx.gw.stack.s3_bucket, Key=key)["ContentLength"])
    except Exception:  # reported as "missing"
        return None


async def _gateway_key(ctx: Context, upload_url: str) -> tuple[str, str]:
    conn = await asyncpg.connect(ctx.gw.stack.database_url)
    try:
        row = await conn.fetchrow("select s3_key, state from uploads where id = $1", upload_url.rsplit("/", 1)[1])
        return row["s3_key"], row["state"]
    finally:
        await conn.close()


async def _raw_upload(ctx: Context, path: Path, size: int, part_size: int, parallel: int) -> str:
    """The limit: presigned PUTs straight to S3 with no gateway, as the direct client does them."""
    s3 = _s3(ctx)
    bucket = ctx.gw.stack.s3_bucket
    key = f"bench/raw/{parallel}-{time.monotonic_ns()}"
    upload_id = await asyncio.to_thread(lambda: s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
    count = -(-size // part_size)
    todo = list(range(1, count + 1))
    etags: dict[int, str] = {}

    def sign(number: int, length: int) -> str:
        return s3.generate_presigned_url("upload_part", Params={
            "Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number, "ContentLength": length},
            ExpiresIn=900)

    async def body(file: BinaryIO, offset: int, length: int):  # type: ignore[no-untyped-def]
        file.seek(offset)
        remaining = length
        while remaining:
            chunk = await asyncio.to_thread(file.read, min(READ_CHUNK, remaining))
            remaining -= len(chunk)
            yield chunk

    async with aiohttp.ClientSession() as http:
        async def worker() -> None:
            with path.open("rb") as file:
                while todo:
                    number = todo.pop(0)
                    offset = (number - 1) * part_size
                    length = min(part_size, size - offset)
                    url = sign(number, length)
                    async with http.put(URL(url, encoded=True), data=body(file, offset, length),
                                        headers={"Content-Length": str(length)}, timeout=S3_TIMEOUT) as r:
                        if r.status != 200:
                            raise RuntimeError(f"raw PUT of part {number}: {r.status} {await r.text()}")
                        etags[number] = r.headers["ETag"]

        await asyncio.gather(*(worker() for _ in range(min(parallel, count))))
    await asyncio.to_thread(lambda: s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]}))
    return key


def _node_upload(ctx: Context, endpoint: str, token: str | None, path: Path) -> dict[str, Any]:
    chunk = ctx.settings.chunk_size or "Infinity"
    options = {"endpoint": endpoint, "token": token, "file": str(path), "chunkSize": chunk}
    result = subprocess.run(["node", str(ctx.node_cache / "tus_upload.mjs"), json.dumps(options)],
                            cwd=ctx.node_cache, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"tus-js-client upload to {endpoint} failed: {result.stderr[-2000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    if answer.get("retries"):
        ctx.note(f"tus-js-client retried {answer['retries']} times uploading to {endpoint}: "
                 f"{result.stderr.strip().splitlines()[0] if result.stderr.strip() else ''}")
    return answer


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    size = s.upload_size
    path = ctx.work / "upload.bin"
    log(f"throughput: writing a {size / 2**20:.0f} MiB file")
    make_file(path, size)
    try:
        return _measure(ctx, path)
    finally:
        path.unlink(missing_ok=True)


def _measure(ctx: Context, path: Path) -> dict[str, Any]:
    s = ctx.settings
    size = s.upload_size
    gib = size / GiB
    meter_gw = Meter({"gateway": ctx.gw.process.pid})
    meter_tus = Meter({"tus": ctx.peers["tus"].pid})
    runs: dict[str, list[dict[str, Any]]] = {}
    with meter_gw.phase() as idle:  # background work (sweeps, pool upkeep) is in every figure below
        time.sleep(2.0 if s.quick else 3.0)
    idle_cores = idle["gateway"].cpu_s / idle["gateway"].wall_s
    parts = -(-size // ctx.part_size)
    s3 = _s3(ctx)

    def record(name: str, seconds: float, usage: Any, key: str | None, state: str = "completed") -> None:
        """usage: the serving process's (None for raw PUTs, which no server of ours sees)."""
        ok = key is not None and state == "completed" and _object_size(ctx, key) == size
        # The upload's own cost: what the process used beyond its idle background during the upload.
        busy = max(0.0, usage.cpu_s - idle_cores * usage.wall_s) if usage and name != "tus-server" else None
        row = {"seconds": seconds, "mb_per_s": size / 1e6 / seconds, "ok": ok,
               "cpu_s_per_gib": usage.cpu_s / gib if usage else None,
               "cpu_ms_per_part": busy / parts * 1000 if busy is not None else None,
               "peak_rss_mib": usage.peak_rss_mib if usage else None}
        runs.setdefault(name, []).append(row)
        if not ok:
            ctx.note(f"throughput {name}: the object in S3 is missing or has the wrong size (state {state})")
        cost = (f"   server CPU {usage.cpu_s / gib:.3f} s/GiB   peak RSS {usage.peak_rss_mib:.0f} MiB"
                if usage else "")
        log(f"  {name:>12}: {row['mb_per_s']:7.0f} MB/s{cost}")
        if key is not None:  # keep SeaweedFS small: the object has been checked
            s3.delete_object(Bucket=ctx.gw.stack.s3_bucket, Key=key)

    for rep in range(s.throughput_reps):
        if s.throughput_reps > 1:
            log(f"throughput: repetition {rep + 1}/{s.throughput_reps}")
        for parallel in s.parallel:
            log(f"throughput: raw presigned PUTs, {parallel} in flight")
            started = time.perf_counter()
            key = asyncio.run(_raw_upload(ctx, path, size, ctx.part_size, parallel))
            record(f"raw p{parallel}", time.perf_counter() - started, None, key)

            log(f"throughput: direct path (DirectUploader), {parallel} in flight")
            uploader = DirectUploader(f"{ctx.gw.url}/files", path, token=ctx.token(f"direct-{parallel}-{rep}"),
                                      parallel=parallel, state_file=ctx.work / f"direct-state-{parallel}-{rep}.json")
            with meter_gw.phase() as usage:
                started = time.perf_counter()
                outcome = asyncio.run(uploader.upload())
                seconds = time.perf_counter() - started
            key, state = asyncio.run(_gateway_key(ctx, outcome.url))
            record(f"direct p{parallel}", seconds, usage["gateway"], key, state)

        log(f"throughput: proxy path, tus-js-client -> gateway (chunkSize {s.chunk_size or 'Infinity'})")
        with meter_gw.phase() as usage:
            answer = _node_upload(ctx, f"{ctx.gw.url}/files", ctx.token(f"proxy-{rep}"), path)
        key, state = asyncio.run(_gateway_key(ctx, answer["url"]))
        record("proxy", answer["ms"] / 1000, usage["gateway"], key, state)

        log("throughput: tus-js-client -> @tus/server + @tus/s3-store")
        with meter_tus.phase() as usage:
            answer = _node_upload(ctx, f"{ctx.peers['tus'].url}/files", None, path)
        upload_id = answer["url"].rsplit("/", 1)[1]
        record("tus-server", answer["ms"] / 1000, usage["tus"], upload_id)

    # Best of the repetitions (the same rule for everyone): interference from the rest of the machine
    # only ever slows an upload down.
    rows = {}
    for name, attempts in runs.items():
        best = max(attempts, key=lambda r: r["mb_per_s"])
        rows[name] = {**best, "ok": all(r["ok"] for r in attempts), "mb_per_s_all": [r["mb_per_s"] for r in attempts]}
    return {"size": size, "part_size": ctx.part_size, "chunk_size": s.chunk_size, "rows": rows,
            "reps": s.throughput_reps, "gateway_idle_cores": idle_cores}
