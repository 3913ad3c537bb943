"""`gateway upload` of a large file on the direct path: kill the client mid-way, resume, verify.

    python -m bench.direct_upload --size 1GiB --parallel 4

Prints throughput, the gateway's CPU seconds per GiB (close to zero: the bytes never touch it) and
whether the object's sha256 in S3 equals the file's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import botocore.session
from botocore.config import Config

from bench.stack import RunningGateway, running_gateway
from gateway.config import parse_size


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(8 * 1024 * 1024)
    with path.open("wb") as out:
        written = 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    return digest.hexdigest()


def upload_command(gw: RunningGateway, path: Path, parallel: int, state: Path) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "upload", str(path), "--url", f"{gw.url}/files",
            "--token", gw.token, "--parallel", str(parallel), "--state-file", str(state)]


def stored_sha256(gw: RunningGateway, key: str) -> str:
    s3 = botocore.session.get_session().create_client(
        "s3", endpoint_url=gw.stack.s3_endpoint_url, region_name=gw.stack.s3_region,
        aws_access_key_id=gw.stack.s3_access_key_id, aws_secret_access_key=gw.stack.s3_secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=gw.stack.s3_bucket, Key=key)["Body"].iter_chunks(8 * 1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--kill-after", type=float, default=0.4, help="fraction of the file before SIGKILL")
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="bench-direct-") as tmp, running_gateway(Path(tmp)) as gw:
        source = Path(tmp) / "big.bin"
        expected = make_file(source, size)
        state = Path(tmp) / "state.json"
        cpu_before = gw.cpu_seconds()
        started = time.monotonic()
        # First run: killed with SIGKILL once about `kill_after` of the bytes should be in S3.
        first = subprocess.Popen(upload_command(gw, source, args.parallel, state), stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
        while first.poll() is None and not state.exists():
            time.sleep(0.05)
        time.sleep(0.2)
        warmup = time.monotonic()
        while first.poll() is None and time.monotonic() - warmup < 60:
            time.sleep(0.1)
            if _uploaded_fraction(gw, state) >= args.kill_after:
                break
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = _uploaded_fraction(gw, state)
        second = subprocess.run(upload_command(gw, source, args.parallel, state), capture_output=True, text=True)
        elapsed = time.monotonic() - started
        cpu = gw.cpu_seconds() - cpu_before
        if second.returncode != 0:
            raise SystemExit(f"resume failed: {second.stderr}")
        url = second.stdout.strip().splitlines()[-1]
        key = _key_of(gw, url.rsplit("/", 1)[-1])
        ok = stored_sha256(gw, key) == expected
        gib = size / 1024**3
        print("\n| file | parallel | killed at | total time | MiB/s (incl. restart) | gateway CPU s/GiB | sha256 |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {size / 1024**2:.0f} MiB | {args.parallel} | {killed_at:.0%} | {elapsed:.1f} s | "
              f"{size / 1024**2 / elapsed:.0f} | {cpu / gib:.3f} | {'match' if ok else 'MISMATCH'} |")
        if not ok:
            raise SystemExit(1)


def _uploaded_fraction(gw: RunningGateway, state: Path) -> float:
    """Confirmed bytes / length of the one upload in the database (the gateway's own view)."""
    async def query() -> float:
        conn = await asyncpg.connect(gw.stack.database_url)
        try:
            row = await conn.fetchrow("select prefix_parts * part_size::float8 / length as done from uploads "
                                      "where length > 0 order by created_at desc limit 1")
            return float(row["done"]) if row else 0.0
        finally:
            await conn.close()

    return asyncio.run(query())


def _key_of(gw: RunningGateway, upload_id: str) -> str:
    async def query() -> str:
        conn = await asyncpg.connect(gw.stack.database_url)
        try:
            return str(await conn.fetchval("select s3_key from uploads where id = $1", upload_id))
        finally:
            await conn.close()

    return asyncio.run(query())


if __name__ == "__main__":
    main()
