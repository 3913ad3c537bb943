"""Benchmarks against the real peers, side by side in one run: `python -m bench [--quick]`.

Starts on 127.0.0.1: PostgreSQL and SeaweedFS (embedded), `gateway serve`, the floor server, and the
peers from npm (@tus/server + @tus/s3-store, Uppy Companion, tus-js-client; pinned in
bench/peers/package.json and package-lock.json, installed once into bench/.cache/node). Then measures
signing, request rates, throughput and cost, bytes re-sent per network drop (bench/drops.py), and
1,000 concurrent uploads; prints a markdown table and
writes it with a chart to docs/bench.md and docs/bench.png, and the raw numbers to docs/bench.json
(a --quick run writes to bench/.cache/quick/ instead, so a smoke run never replaces the published numbers).

Sections: sign, rate, throughput, drops, scale (`--only rate,scale` runs a subset).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import drops, rates, report, scale, signing, throughput
from bench.common import ROOT, Context, Settings, log
from bench.procstat import find_pids, postmaster_pid
from bench.servers import DEFAULT_CACHE, all_peers, ensure_node_peers, installed_versions
from bench.stack import running_gateway
from gateway.config import Settings as GatewaySettings
from gateway.core.model import plan_part_size

SECTIONS = {"sign": signing, "rate": rates, "throughput": throughput, "drops": drops, "scale": scale}
RESULT_KEYS = {"sign": "signing", "rate": "rates", "throughput": "throughput", "drops": "drops", "scale": "scale"}
# Production defaults, except the per-owner rate limits: no peer has any, and a benchmark is a flood.
GATEWAY_ENV = {"GATEWAY_RATE_LIMIT_PARTS": "0", "GATEWAY_RATE_LIMIT_HEAD": "0"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory() -> str:
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        return f"{kib / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        return "unknown RAM"


def _seaweedfs_version() -> str:
    weed = Path(sysconfig.get_path("scripts")) / "weed"
    try:
        # "version 8000GB 4.48 pypi linux amd64": the size flavour, then the release.
        words = subprocess.run([str(weed), "version"], capture_output=True, text=True, timeout=10).stdout.split()
        return next(w for w in words if w[:1].isdigit() and "." in w)
    except (OSError, subprocess.SubprocessError, StopIteration):
        return "unknown"


async def _postgres_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        version = str(await conn.fetchval("show server_version")).split()[0]
        return f"PostgreSQL {version}"
    finally:
        await conn.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs: a smoke test (~2 min)")
    parser.add_argument("--only", help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="where bench.md and bench.png go (default docs/, with --quick "
                                                 "bench/.cache/quick/)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per rate comparison (3; quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per load run (4; quick 2)")
    parser.add_argument("--size", dest="upload_size", help="throughput file size (1GiB; quick 64MiB)")
    parser.add_argument("--chunk-size", help="tus-js-client chunkSize on the proxy paths (64MiB; 'Infinity')")
    parser.add_argument("--throughput-reps", type=int, help="repetitions of each upload, best counts (2; quick 1)")
    parser.add_argument("--scale-uploads", type=int, help="uploads in flight at once (1000)")
    parser.add_argument("--node-cache", type=Path, default=DEFAULT_CACHE, help="where npm installs the peers")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, data) afterwards")
    parser.add_argument("--no-chart", action="store_true", help="write only the table (no matplotlib needed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.make(args.quick, rounds=args.rounds, duration=args.duration, upload_size=args.upload_size,
                             chunk_size=args.chunk_size, scale_uploads=args.scale_uploads,
                             throughput_reps=args.throughput_reps)
    wanted = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    out = args.out or (ROOT / "bench" / ".cache" / "quick" if args.quick else ROOT / "docs")
    if not args.no_chart and importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("the chart needs matplotlib: pip install -e '.[bench]' (or pip install matplotlib), "
                         "or run with --no-chart")
    started = time.monotonic()
    cache = ensure_node_peers(args.node_cache, log=log)
    part_size = plan_part_size(settings.upload_size, GatewaySettings().part_size, None)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    failed: dict[str, str] = {}
    ctx: Context | None = None
    meta: dict[str, Any] = {}
    try:
        log(f"starting PostgreSQL, SeaweedFS, the gateway and the peers in {work} ...")
        with running_gateway(work, **GATEWAY_ENV) as gw, all_peers(cache, gw.stack, work, part_size) as peers:
            ctx = Context(settings, gw, peers, work, cache, part_size,
                          postgres_pid=postmaster_pid(work / "postgres" / "pgdata"),
                          seaweedfs_pids=find_pids("weed", " mini ", str(work / "seaweedfs")))
            meta["postgres"] = asyncio.run(_postgres_version(gw.stack.database_url))
            log(f"  ready in {time.monotonic() - started:.0f} s")
            for name in wanted:
                section_started = time.monotonic()
                try:
                    ctx.results[RESULT_KEYS[name]] = SECTIONS[name].run(ctx)
                except Exception as exc:  # one broken section must not hide the others
                    failed[name] = f"{type(exc).__name__}: {exc}"[:600]
                    log(traceback.format_exc())
                    for server in peers.values():
                        if server.process.poll() is not None:
                            failed[name] += f" ({server.name} has exited; see {server.log})"
                log(f"  {name}: {time.monotonic() - section_started:.0f} s")
    finally:
        if args.keep:
            log(f"logs and data kept in {work}")
        else:
            if failed or ctx is None:  # keep the logs (not gigabytes of SeaweedFS data) for a post-mortem
                logs = ROOT / "bench" / ".cache" / "logs" / datetime.now().strftime("%Y%m%d-%H%M%S")
                for found in work.rglob("*.log"):
                    target = logs / found.relative_to(work)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(found, target)
                log(f"the servers' logs are in {logs}")
            shutil.rmtree(work, ignore_errors=True)
    assert ctx is not None
    if "scale" in ctx.results and not all(ctx.results["scale"]["checks"].values()):
        failed.setdefault("scale", "correctness checks failed (see notes)")
    meta.update({
        "mode": "Quick (--quick)" if settings.quick else "Full",
        "command": "python -m bench" + (" --quick" if settings.quick else ""),
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "took_s": time.monotonic() - started, "cores": os.cpu_count(), "cpu": _cpu_model(), "memory": _memory(),
        "python": platform.python_version(),
        "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
        "seaweedfs": _seaweedfs_version(), "peers": installed_versions(cache), "failed": failed,
    })
    text = report.markdown(meta, ctx.results, ctx.notes)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(text)
    (out / "bench.json").write_text(json.dumps({"meta": meta, "results": ctx.results, "notes": ctx.notes},
                                               indent=1, default=str))
    written = [out / "bench.md", out / "bench.json"]
    if not args.no_chart:
        report.chart(ctx.results, out / "bench.png",
                     f"tus-s3-gateway vs peers — {meta['mode'].split()[0].lower()} run, {meta['when']}, "
                     f"{meta['cores']} cores")
        written.append(out / "bench.png")
    print(text)
    log(f"wrote {' and '.join(map(str, written))}; the run took {meta['took_s']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
