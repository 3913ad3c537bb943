"""Peak RSS of the gateway while N concurrent proxy (tus PATCH) uploads stream through it.

    python bench/proxy_memory.py --uploads 20 --size 1GiB

Runs the same load at a small and at the requested size, so the table shows whether memory grows
with file size (it must not: bodies are streamed into S3 parts, never buffered whole). Also reports
the gateway's CPU seconds per GiB on the proxy path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.stack import RunningGateway, running_gateway
from gateway.config import parse_size

BLOCK = os.urandom(1024 * 1024)


async def body(size: int):  # type: ignore[no-untyped-def]
    sent = 0
    while sent < size:
        chunk = BLOCK[: min(len(BLOCK), size - sent)]
        sent += len(chunk)
        yield chunk


async def one_upload(http: aiohttp.ClientSession, gw: RunningGateway, size: int) -> None:
    headers = {"Authorization": f"Bearer {gw.token}", "Tus-Resumable": "1.0.0"}
    async with http.post(f"{gw.url}/files", headers={**headers, "Upload-Length": str(size)}) as response:
        assert response.status == 201, await response.text()
        location = response.headers["Location"]
    async with http.patch(location, data=body(size), headers={
            **headers, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0",
            "Content-Length": str(size)}) as response:
        assert response.status == 204, await response.text()
        assert response.headers["Upload-Offset"] == str(size)


async def load(gw: RunningGateway, uploads: int, size: int) -> dict[str, float]:
    peak = 0.0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, gw.rss_mib())
            await asyncio.sleep(0.2)

    cpu_before = gw.cpu_seconds()
    started = time.monotonic()
    sampler = asyncio.create_task(sample())
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(one_upload(http, gw, size) for _ in range(uploads)))
    done.set()
    await sampler
    elapsed = time.monotonic() - started
    gib = uploads * size / 1024**3
    return {"uploads": uploads, "size_mib": size / 1024**2, "seconds": elapsed,
            "mib_per_s": uploads * size / 1024**2 / elapsed, "peak_rss_mib": peak,
            "cpu_s_per_gib": (gw.cpu_seconds() - cpu_before) / gib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--small", default="64MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp, running_gateway(Path(tmp)) as gw:
        rows = [asyncio.run(load(gw, args.uploads, parse_size(size))) for size in (args.small, args.size)]
        print(f"\nidle RSS before load: see first row; gateway peak RSS (VmHWM) overall: {gw.peak_rss_mib():.0f} MiB\n")
        print("| uploads | size each | total MiB/s | gateway peak RSS during run | gateway CPU s/GiB |")
        print("|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['uploads']} | {row['size_mib']:.0f} MiB | {row['mib_per_s']:.0f} | "
                  f"{row['peak_rss_mib']:.0f} MiB | {row['cpu_s_per_gib']:.2f} |")


if __name__ == "__main__":
    main()
