"""Bytes re-sent per network drop on the proxy path: the gateway vs @tus/server + @tus/s3-store.

    python -m bench.drops [--size 256MiB] [--cuts 5] [--reps 2] [--seed 16]

tus-js-client (Node) uploads one file through a TCP proxy that aborts the connection (both sides, as a
dropped mobile link looks to a server that still gets the reset) `cuts` times, at random points of the
client->server byte stream; the client resumes on its own (HEAD, then PATCH from the offset), with its
default retryDelays [0, 1000, 3000, 5000] (a run fails when four retries in a row make no progress).
Each server gets the same cut points, with tus-js-client's default chunkSize (Infinity: one PATCH for
the whole file) and with 10 MiB PATCH requests (tus-android-client's default). Re-sent = bytes the
client sent beyond the file (request heads left out), divided by the cuts. Also the serving process's
peak RSS during the runs and a check that S3 holds the file (sha256). Part of `python -m bench` as the
`drops` section.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import MiB, log
from bench.procstat import Meter
from bench.stack import RunningGateway, running_gateway
from bench.throughput import make_file
from gateway.config import Settings as GatewaySettings
from gateway.config import parse_size
from gateway.core.model import plan_part_size, proxy_part_size
from gateway.embedded import s3_client
from tests.support.proxies import TcpProxy  # the tests' TCP relay, with its cut points

# tus-js-client's own default (bench/peers/tus_upload.mjs sets a shorter one for the other sections).
RETRY_DELAYS = [0, 1000, 3000, 5000]
CHUNKINGS = {"Infinity (one PATCH)": "Infinity", "10 MiB PATCHes": str(10 * MiB)}


async def _upload_through(proxy: TcpProxy, node_cache: Path, token: str | None, path: Path,
                          chunk: str) -> dict[str, Any]:
    async with proxy:
        options = {"endpoint": f"http://127.0.0.1:{proxy.port}/files", "token": token, "file": str(path),
                   "chunkSize": chunk, "retryDelays": RETRY_DELAYS}
        child = await asyncio.create_subprocess_exec(
            "node", str(node_cache / "tus_upload.mjs"), json.dumps(options), cwd=node_cache,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(child.communicate(), 1800)
    if child.returncode != 0:
        raise RuntimeError(f"tus-js-client upload through the cutting proxy failed: {err.decode()[-2000:]}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def _stored_sha256(gw: RunningGateway, key: str) -> str:
    st = gw.stack
    body = s3_client(st.s3_endpoint_url, st.s3_access_key_id, st.s3_secret_access_key, timeout=120).get_object(
        Bucket=st.s3_bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    while chunk := body.read(8 * MiB):
        digest.update(chunk)
    return digest.hexdigest()


async def _gateway_key(gw: RunningGateway, url: str) -> str:
    conn = await asyncpg.connect(gw.stack.database_url)
    try:
        return str(await conn.fetchval("select s3_key from uploads where id = $1", url.rsplit("/", 1)[1]))
    finally:
        await conn.close()


def measure(gw: RunningGateway, tus_url: str, tus_pid: int, node_cache: Path, work: Path, *, size: int,
            cuts: int = 5, reps: int = 2, seed: int = 16, notes: list[str] | None = None) -> dict[str, Any]:
    """{"rows": {chunking: {server: {...}}}, ...}: re-sent MiB per drop, peak RSS, checks."""
    path = work / "drops.bin"
    log(f"drops: writing a {size / MiB:.0f} MiB file")
    make_file(path, size)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    servers = {"gateway": (gw.url, gw.token, gw.process.pid), "tus-server": (tus_url, None, tus_pid)}
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    rng = random.Random(seed)
    try:
        for _rep in range(reps):
            for label, chunk in CHUNKINGS.items():
                points = [rng.randrange(1, size) for _ in range(cuts)]  # the same points for both servers
                for name, (url, token, pid) in servers.items():
                    proxy = TcpProxy(int(url.rsplit(":", 1)[1]), cut_at=points)
                    meter = Meter({name: pid})
                    row = rows.setdefault(label, {}).setdefault(name, {
                        "drops": 0, "resent_bytes": 0, "per_drop_mib": [], "peak_rss_mib": 0.0, "ok": True,
                        "seconds": [], "failed": 0})
                    with meter.phase() as usage:
                        started = time.perf_counter()
                        try:
                            answer = asyncio.run(_upload_through(proxy, node_cache, token, path, chunk))
                        except RuntimeError as exc:  # tus-js-client gave up: its retries made no progress
                            answer = None
                            failure = str(exc).strip().splitlines()[-1][:300]
                        seconds = time.perf_counter() - started
                    if answer is None:
                        if gw.process.poll() is not None:
                            failure += f" (the gateway exited with {gw.process.returncode})"
                        row["failed"] += 1
                        row["ok"] = False
                        row["peak_rss_mib"] = max(row["peak_rss_mib"], usage[name].peak_rss_mib)
                        log(f"  {label:>22} {name:>10}: the upload FAILED after {proxy.cuts} drops: {failure}")
                        if notes is not None:
                            notes.append(f"drops {label} {name}: tus-js-client gave up after {proxy.cuts} "
                                         f"drops: {failure}")
                        continue
                    key = answer["url"].rsplit("/", 1)[1] if name == "tus-server" else \
                        asyncio.run(_gateway_key(gw, answer["url"]))
                    ok = _stored_sha256(gw, key) == expected
                    resent = proxy.upstream - proxy.head_bytes - size
                    row["drops"] += proxy.cuts
                    row["resent_bytes"] += resent
                    row["per_drop_mib"].append(resent / max(proxy.cuts, 1) / MiB)
                    row["peak_rss_mib"] = max(row["peak_rss_mib"], usage[name].peak_rss_mib)
                    row["ok"] = row["ok"] and ok and proxy.cuts == cuts
                    row["seconds"].append(seconds)
                    log(f"  {label:>22} {name:>10}: {proxy.cuts} drops, re-sent {resent / MiB:7.2f} MiB "
                        f"({resent / max(proxy.cuts, 1) / MiB:.2f} MiB per drop), peak RSS "
                        f"{usage[name].peak_rss_mib:.0f} MiB, {seconds:.1f} s, sha256 {'ok' if ok else 'WRONG'}")
                    if not ok and notes is not None:
                        notes.append(f"drops {label} {name}: the stored object does not match the file")
    finally:
        path.unlink(missing_ok=True)
    for servers_rows in rows.values():
        for row in servers_rows.values():
            row["mean_mib_per_drop"] = row["resent_bytes"] / max(row["drops"], 1) / MiB
    return {"size": size, "cuts": cuts, "reps": reps, "seed": seed, "rows": rows}


def effective_part_size(size: int) -> int:
    """The gateway's part size for a file of `size` uploaded through the proxy path from its first byte
    (the plan, lowered to the proxy buffer: docs/architecture.md §2); @tus/s3-store gets the same."""
    settings = GatewaySettings()
    planned = plan_part_size(size, settings.part_size, None)
    return proxy_part_size(size, planned, settings.proxy_buffer) or planned


def run(ctx: Any) -> dict[str, Any]:
    """The `drops` section of `python -m bench`: a @tus/server with the same part size as the gateway's."""
    from bench.servers import tus_server

    size = 64 * MiB if ctx.settings.quick else 256 * MiB
    part_size = effective_part_size(size)
    with tus_server(ctx.node_cache, ctx.gw.stack, ctx.work, part_size) as peer:
        result = measure(ctx.gw, peer.url, peer.pid, ctx.node_cache, ctx.work, size=size,
                         reps=1 if ctx.settings.quick else 2, notes=ctx.notes)
    result["part_size"] = part_size
    return result


def main(argv: list[str] | None = None) -> int:
    from bench.report import drops_table
    from bench.servers import DEFAULT_CACHE, ensure_node_peers, tus_server

    parser = argparse.ArgumentParser(prog="python -m bench.drops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--cuts", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2, help="runs per server and chunking (new cut points each)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--node-cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    cache = ensure_node_peers(args.node_cache, log=log)
    part_size = effective_part_size(size)
    with tempfile.TemporaryDirectory(prefix="bench-drops-") as tmp:
        work = Path(tmp)
        with running_gateway(work, GATEWAY_RATE_LIMIT_HEAD="0") as gw, \
                tus_server(cache, gw.stack, work, part_size) as peer:
            try:
                result = measure(gw, peer.url, peer.pid, cache, work, size=size, cuts=args.cuts, reps=args.reps,
                                 seed=args.seed)
            finally:  # the servers' logs outlive the scratch directory
                logs = Path(__file__).resolve().parent / ".cache" / "logs"
                logs.mkdir(parents=True, exist_ok=True)
                for name in ("gateway.log", "tus-server.log"):
                    if (work / name).exists():
                        shutil.copyfile(work / name, logs / f"drops-{name}")
    result["part_size"] = part_size
    print("\n".join(drops_table(result)))
    return 0 if all(r["ok"] for rows in result["rows"].values() for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
