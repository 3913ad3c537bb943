"""Shared pieces of the side-by-side benchmark (python -m bench): settings per mode, the context every
section gets, the load generator runner and small statistics helpers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import Server
from bench.stack import AUDIENCE, SECRET, RunningGateway
from gateway.cli import mint_token
from gateway.config import parse_size

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class Settings:
    """Sizes and durations of one run; `quick` shrinks everything for a smoke run."""

    quick: bool
    rounds: int  # interleaved rounds per request-rate / signing comparison
    warmup: float  # seconds per load run before measuring
    duration: float  # measured seconds per load run and round
    sign_clients: int
    sign_batch: int
    presign_n: int  # URLs per in-process presign loop
    connections: tuple[int, ...]
    head_uploads: int  # distinct uploads the HEAD load walks through
    upload_size: int
    parallel: tuple[int, ...]
    chunk_size: int  # tus-js-client chunkSize on the proxy path (0 = Infinity)
    throughput_reps: int  # each upload this many times, interleaved; the best counts
    scale_uploads: int
    scale_part: int
    scale_connections: int

    @classmethod
    def make(cls, quick: bool, **overrides: Any) -> Settings:
        if quick:
            base = cls(quick=True, rounds=1, warmup=1.0, duration=2.0, sign_clients=8, sign_batch=100,
                       presign_n=2_000, connections=(64, 256), head_uploads=512, upload_size=64 * MiB,
                       parallel=(1, 4, 8), chunk_size=64 * MiB, throughput_reps=1, scale_uploads=1000,
                       scale_part=64 * 1024, scale_connections=256)
        else:
            base = cls(quick=False, rounds=3, warmup=1.0, duration=4.0, sign_clients=8, sign_batch=100,
                       presign_n=20_000, connections=(64, 256), head_uploads=1024, upload_size=1 * GiB,
                       parallel=(1, 4, 8), chunk_size=64 * MiB, throughput_reps=2, scale_uploads=1000,
                       scale_part=64 * 1024, scale_connections=256)
        changes = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(changes.get("upload_size"), str):
            changes["upload_size"] = parse_size(changes["upload_size"])
        if isinstance(changes.get("chunk_size"), str):
            text = changes["chunk_size"]
            changes["chunk_size"] = 0 if text.lower() in ("0", "inf", "infinity") else parse_size(text)
        return cls(**{**base.__dict__, **changes})


@dataclass
class Context:
    settings: Settings
    gw: RunningGateway
    peers: dict[str, Server]
    work: Path  # scratch directory of this run (deleted at the end)
    node_cache: Path
    part_size: int  # the gateway's part size for the throughput file; @tus/s3-store gets the same
    notes: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    postgres_pid: int | None = None  # the postmaster; its backends are its children
    seaweedfs_pids: list[int] = field(default_factory=list)

    def watch(self, server_pid: int) -> dict[str, Any]:
        """What the load generator should measure the CPU of, besides itself."""
        trees = {"postgres": self.postgres_pid} if self.postgres_pid else {}
        return {"watch": {"server": [server_pid], "seaweedfs": self.seaweedfs_pids}, "watch_trees": trees}

    def token(self, subject: str) -> str:
        """A JWT of another owner: the gateway's quotas, locks and rate limits are per owner."""
        return mint_token(SECRET, subject, audience=AUDIENCE, issuer="bench", ttl=6 * 3600)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"  note: {text}")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


def run_load(url: str, requests: list[dict[str, Any]], connections: int, settings: Settings,
             ok: tuple[int, ...] = (200, 201, 204), duration: float | None = None,
             watch: dict[str, Any] | None = None) -> dict[str, Any]:
    """One closed-loop load run in a separate process (bench/loadgen.py); `watch` from Context.watch."""
    host, port = host_port(url)
    spec = {"host": host, "port": port, "connections": connections, "warmup": settings.warmup,
            "duration": duration or settings.duration, "requests": requests, "ok": list(ok), **(watch or {})}
    result = subprocess.run([sys.executable, "-m", "bench.loadgen"], input=json.dumps(spec), cwd=ROOT,
                            capture_output=True, text=True, timeout=settings.warmup + spec["duration"] + 120)
    if result.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def merge_loads(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of the same comparison as one: total ok answers over total measured time."""
    latencies = sorted(lat for run in runs for lat in run["latencies_us"])
    seconds = sum(run["seconds"] for run in runs)
    statuses: dict[str, int] = {}
    for run in runs:
        for status, count in run["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    errors = sum(run["errors"] for run in runs)
    samples = [s for run in runs for s in run["error_sample"]]
    names = {name for run in runs for name in run.get("watched_cpu_util", {})}
    cpu = {name: sum(run.get("watched_cpu_util", {}).get(name, 0.0) for run in runs) / len(runs) for name in names}
    rps = len(latencies) / seconds if seconds else 0.0
    return {
        "cpu_cores": cpu,  # average CPU use during the windows, in cores, per watched process group
        "cpu_ms_per_request": {name: used / rps * 1000 for name, used in cpu.items()} if rps else {},
        "rps": rps,
        "rounds_rps": [run["rps"] for run in runs],
        "p50_ms": percentile(latencies, 50) / 1000, "p99_ms": percentile(latencies, 99) / 1000,
        "count": len(latencies), "statuses": statuses, "errors": errors, "error_sample": samples[:3],
        "loadgen_cpu_util": max(run["cpu_util"] for run in runs),
    }


def percentile(sorted_values: list[float] | list[int], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(pct / 100 * len(sorted_values)) - 1))  # nearest rank
    return float(sorted_values[index])


def check_load(ctx: Context, label: str, merged: dict[str, Any], ok: tuple[int, ...]) -> None:
    """Turn what a reader must know about a load run into notes: failures, a saturated generator."""
    total = sum(merged["statuses"].values()) + merged["errors"]
    bad = total - merged["count"]
    if total == 0:
        ctx.note(f"{label}: no answer at all")
    elif bad > 0.001 * total:
        others = {s: n for s, n in merged["statuses"].items() if int(s) not in ok}
        ctx.note(f"{label}: {bad} of {total} requests failed (statuses {others}, connection errors "
                 f"{merged['errors']}{': ' + merged['error_sample'][0] if merged['error_sample'] else ''})")
    if merged["loadgen_cpu_util"] > 0.9:
        ctx.note(f"{label}: the load generator used {merged['loadgen_cpu_util']:.0%} of a core: it may be the limit")


class Timer:
    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
