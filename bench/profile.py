"""Where the gateway's CPU goes on one hot route, under load: py-spy samples `gateway serve` while the
load generator (bench/loadgen.py) drives the route, then the heaviest frames are printed.

    python -m bench.profile head            # HEAD of existing uploads, 64 connections
    python -m bench.profile create --seconds 10 --connections 64

Routes: head, create, sign (100 URLs per request). Each run starts
its own embedded PostgreSQL + SeaweedFS and one gateway process with the bench's settings (rate limits
off, access log on). Needs py-spy (`pip install py-spy`; it reads the process with ptrace, so run as
root or with kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from bench.common import Settings, run_load
from bench.stack import running_gateway

MiB = 1024 * 1024
OWNERS = 64
TUS = {"Tus-Resumable": "1.0.0"}


async def _uploads(url: str, tokens: list[str], count: int, length: int) -> list[str]:
    gate = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> str:
            headers = {**TUS, "Authorization": f"Bearer {tokens[i % len(tokens)]}", "Upload-Length": str(length)}
            async with gate, http.post(f"{url}/files", headers=headers) as r:
                assert r.status == 201, (r.status, await r.text())
                return URL(r.headers["Location"]).path
        return list(await asyncio.gather(*(one(i) for i in range(count))))


def requests_for(route: str, url: str, tokens: list[str]) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    def auth(i: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}

    if route == "create":
        return [{"method": "POST", "path": "/files", "headers": {**TUS, **auth(i), "Upload-Length": str(MiB)}}
                for i in range(len(tokens))], (201,)
    if route == "head":
        paths = asyncio.run(_uploads(url, tokens, 512, MiB))
        return [{"method": "HEAD", "path": p, "headers": {**TUS, **auth(i)}} for i, p in enumerate(paths)], (200,)
    if route == "sign":
        paths = asyncio.run(_uploads(url, tokens, 64, 200 * 64 * MiB))  # parts of 64 MiB
        body = json.dumps({"parts": list(range(1, 101))})
        return [{"method": "POST", "path": f"{p}/parts", "body": body,
                 "headers": {**auth(i), "Content-Type": "application/json"}} for i, p in enumerate(paths)], (200,)
    raise SystemExit(f"unknown route {route!r}")


def _package(frame: str) -> str:
    """`gateway/http`, `aiohttp`, `asyncpg`, `logging`... from a frame like `f (aiohttp/web_protocol.py:446)`."""
    path = frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]
    parts = path.split("/")
    if parts[0] == "gateway" and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0].removesuffix(".py") if len(parts) > 1 or parts[0].endswith(".py") else path


def summarize(raw: Path, top: int) -> str:
    """The frames with the most samples: self time (the frame itself) and inclusive (anywhere on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        by_package[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self %  package"]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in by_package.most_common(top)]
    lines += ["", "self %  frame"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "incl %  frame"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("route", choices=["head", "create", "sign"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--env", action="append", default=[], metavar="GATEWAY_X=value",
                        help="an extra setting for the gateway (repeatable), to compare with and without")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gw-profile-") as tmp, running_gateway(
            Path(tmp), GATEWAY_RATE_LIMIT_PARTS="0", GATEWAY_RATE_LIMIT_HEAD="0",
            **dict(item.split("=", 1) for item in args.env)) as gw:
        from bench.stack import AUDIENCE, SECRET
        from gateway.cli import mint_token
        tokens = [mint_token(SECRET, f"profile-{i}", audience=AUDIENCE, issuer="bench", ttl=3600)
                  for i in range(OWNERS)]
        requests, ok = requests_for(args.route, gw.url, tokens)
        settings = Settings.make(True)
        raw = Path(tmp) / "profile.txt"
        spy = [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
               "--pid", str(gw.process.pid), "--duration", str(int(args.seconds)), "--rate", "200",
               "--format", "raw", "--output", str(raw), "--nonblocking"]
        result: dict[str, Any] = {}
        load = threading.Thread(target=lambda: result.update(run_load(
            gw.url, requests, args.connections, settings, ok=ok, duration=args.seconds + 1,
            watch={"watch": {"server": [gw.process.pid]}})))
        load.start()
        subprocess.run(spy, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load.join()
        cores = result.get("watched_cpu_util", {}).get("server", 0.0)
        rps = result.get("rps", 0.0)
        print(f"{args.route}: {rps:,.0f} requests/s at {args.connections} connections, gateway "
              f"{cores:.2f} cores = {1e6 * cores / rps if rps else 0:,.0f} µs CPU per request; statuses "
              f"{result.get('statuses')}")
        print(summarize(raw, args.top))


if __name__ == "__main__":
    main()
