"""`gateway serve --workers N` as real processes: one scrape for all workers, a killed worker replaced,
SIGTERM draining every worker while a PATCH finishes, workers that cannot start."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.model import State
from gateway.embedded import StackInfo
from tests.support import MiB
from tests.support.processes import GatewayProcess, patch_then_sigterm, slow_body
from tests.support.tokens import TUS, bearer

PART = 5 * MiB
HEALTHZ = {"route": "public.healthz", "method": "GET", "status": "200"}


def start_workers(stack: StackInfo, tmp_path: Path, workers: int = 2, **settings: str) -> GatewayProcess:
    gw = GatewayProcess(stack, tmp_path, s3_key_prefix=f"workers-{os.getpid()}-{random.randrange(10**6)}",
                        **settings)
    gw.env["TMPDIR"] = str(tmp_path)  # where the parent makes its PROMETHEUS_MULTIPROC_DIR
    gw.start(workers=workers)
    wait_for(lambda: len(worker_pids(gw)) == workers, gw, "both workers serving")
    return gw


def wait_for(condition: Callable[[], bool], gw: GatewayProcess, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert gw.process is not None and gw.process.poll() is None, gw.log.read_text()[-3000:]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{gw.log.read_text()[-3000:]}")
        time.sleep(0.1)


def scrape(gw: GatewayProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """One scrape of the ops port (a fresh connection each: the kernel picks the worker)."""
    text = urllib.request.urlopen(f"{gw.metrics_url}/metrics", timeout=5).read().decode()
    return {family.name: [(sample.labels, sample.value) for sample in family.samples]
            for family in text_string_to_metric_families(text)}


def worker_pids(gw: GatewayProcess) -> set[int]:
    try:
        samples = scrape(gw).get("gateway_worker_start_time_seconds", [])
    except OSError:
        return set()
    return {int(labels["pid"]) for labels, started in samples if started > 0}  # 0: still starting


def value(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(v for sample_labels, v in samples if labels.items() <= sample_labels.items())


def per_worker(tmp_path: Path, pid: int, metric: str, **labels: str) -> float:
    """What one worker alone counted: its own file in the multi-process directory."""
    (metrics_dir,) = tmp_path.glob("gateway-metrics-*")
    files = [str(f) for f in metrics_dir.glob(f"counter_{pid}.db")]
    for family in MultiProcessCollector.merge(files):
        if family.name == metric:
            return value([(s.labels, s.value) for s in family.samples if s.name == f"{metric}_total"], **labels)
    return 0.0


@pytest.fixture(scope="module")
def workers(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    tmp_path = tmp_path_factory.mktemp("workers")
    gw = start_workers(stack, tmp_path)
    yield gw, tmp_path
    if gw.process is not None and gw.process.poll() is None:
        gw.terminate(timeout=60)


async def test_one_scrape_covers_every_worker(workers: tuple[GatewayProcess, Path]) -> None:
    gw, tmp_path = workers
    before = value(scrape(gw)["gateway_requests"], **HEALTHZ)
    # Fresh connections: the kernel spreads them over both workers' sockets (SO_REUSEPORT).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(40):
            async with http.get(f"{gw.url}/healthz") as r:
                assert r.status == 200
    pids = worker_pids(gw)
    assert len(pids) == 2
    own = {pid: per_worker(tmp_path, pid, "gateway_requests", **HEALTHZ) for pid in pids}
    assert all(count > 0 for count in own.values()), own  # both workers served some
    for _ in range(4):  # whichever worker answers the scrape, it reports all of them
        total = value(scrape(gw)["gateway_requests"], **HEALTHZ)
        assert total == before + 40 and total == sum(own.values())
    families = scrape(gw)
    assert value(families["gateway_db_pool_connections"], kind="open") >= 2  # summed over the live workers
    # Sampled from Postgres by whichever worker answered a scrape (every state, 0 when none).
    assert {labels["state"] for labels, _ in families["gateway_uploads"]} == {state.value for state in State}
    assert len(families["gateway_webhook_backlog"]) == 1


async def test_metrics_are_not_on_the_api_port(workers: tuple[GatewayProcess, Path]) -> None:
    gw, _ = workers
    async with aiohttp.ClientSession() as http:
        for headers in ({}, bearer("metrics-reader")):
            async with http.get(f"{gw.url}/metrics", headers=headers) as r:
                assert r.status == 404
                assert (await r.json())["error"]["code"] == "not_found"
        async with http.get(f"{gw.metrics_url}/readyz") as r:  # the probes answer on the ops port too
            assert r.status == 200 and (await r.json())["status"] == "ready"


async def test_a_killed_worker_is_replaced(workers: tuple[GatewayProcess, Path]) -> None:
    gw, _ = workers
    assert gw.process is not None
    old = worker_pids(gw)
    victim = min(old)
    os.kill(victim, signal.SIGKILL)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(20):  # the other worker keeps the port answering
            async with http.get(f"{gw.url}/healthz") as r:
                assert r.status == 200
    wait_for(lambda: len(worker_pids(gw)) == 2 and victim not in worker_pids(gw), gw, "a replacement worker")
    new = worker_pids(gw)
    assert len(new - old) == 1 and gw.process.poll() is None
    assert value(scrape(gw)["gateway_worker_restarts"]) == 1
    assert "died unexpectedly (killed by SIGKILL)" in gw.log.read_text()


async def test_sigterm_drains_every_worker_and_exits_0(stack: StackInfo, tmp_path: Path) -> None:
    gw = start_workers(stack, tmp_path)
    try:
        release = asyncio.Event()
        headers = {**bearer("drain-tester", ttl=3600), **TUS}
        async with aiohttp.ClientSession() as http:
            inflight = await patch_then_sigterm(gw, http, headers, slow_body(os.urandom(PART), release), PART,
                                                settle=1)
            assert gw.process is not None
            async with aiohttp.ClientSession() as fresh:
                # The worker streaming the PATCH is draining: its ops port says so.
                async with fresh.get(f"{gw.metrics_url}/readyz") as r:
                    assert r.status == 503 and await r.json() == {"status": "draining"}
                with pytest.raises((aiohttp.ClientError, OSError)):  # no worker accepts API connections
                    async with fresh.get(f"{gw.url}/healthz") as r:
                        await r.read()
            assert gw.process.poll() is None  # the parent waits for the drain
            release.set()
            assert await inflight == 204
            assert await asyncio.to_thread(gw.process.wait, 30) == 0
        log = gw.log.read_text()
        assert "received SIGTERM: stopping 2 worker(s)" in log and "killing it" not in log
        assert not list(tmp_path.glob("gateway-metrics-*"))  # the metrics directory is removed
    finally:
        gw.stop()


def test_workers_that_cannot_start_fail_serve(stack: StackInfo, tmp_path: Path) -> None:
    gw = GatewayProcess(stack, tmp_path)
    with socket.socket() as taken:  # the API port held by someone else (without SO_REUSEPORT)
        taken.bind(("127.0.0.1", gw.port))
        taken.listen()
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2"], env=gw.env,
                                capture_output=True, text=True, timeout=90)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any("giving up" in line["message"] for line in lines), result.stderr[-3000:]
    assert any("address already in use" in line.get("exception", "").lower() for line in lines)
    assert time.monotonic() - started < 60
