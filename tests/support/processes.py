"""The gateway as a real process (`gateway serve`), for tests that kill, stop and restart things."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp

from gateway.embedded import StackInfo, free_port
from tests.support import MiB
from tests.support.tokens import AUDIENCE, ISSUER, SECRET


class GatewayProcess:
    def __init__(self, stack: StackInfo, log_dir: Path, *, database_url: str | None = None,
                 s3_endpoint_url: str | None = None, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The ops listener (/metrics, probes): a free port each, never the shared default 9090.
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        self.log = log_dir / f"gateway-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.env.update({
            "GATEWAY_DATABASE_URL": database_url or stack.database_url,
            "GATEWAY_S3_ENDPOINT_URL": s3_endpoint_url or stack.s3_endpoint_url,
            "GATEWAY_S3_BUCKET": stack.s3_bucket, "GATEWAY_S3_REGION": stack.s3_region,
            "GATEWAY_S3_ACCESS_KEY_ID": stack.s3_access_key_id,
            "GATEWAY_S3_SECRET_ACCESS_KEY": stack.s3_secret_access_key,
            "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_JWT_AUDIENCE": AUDIENCE, "GATEWAY_JWT_ISSUER": ISSUER,
            "GATEWAY_PORT": str(self.port), "GATEWAY_METRICS_PORT": str(self.metrics_port),
            "GATEWAY_ACCESS_LOG": "false",
            "GATEWAY_RATE_LIMIT_PARTS": "0", "GATEWAY_RATE_LIMIT_HEAD": "0",
            **{f"GATEWAY_{k.upper()}": v for k, v in settings.items()},
        })
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, workers: int = 1) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--workers", str(workers)], env=self.env,
                stdout=log, stderr=log)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1).read()
                return
            except OSError:
                assert self.process is not None
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway did not start:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no cleanup, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


async def slow_body(data: bytes, release: asyncio.Event) -> AsyncIterator[bytes]:
    """A request body that sends its first MiB, then holds the rest back until `release` is set."""
    yield data[:MiB]
    await release.wait()
    yield data[MiB:]


async def patch_then_sigterm(gw: GatewayProcess, http: aiohttp.ClientSession, headers: Mapping[str, str],
                             body: AsyncIterator[bytes], length: int, *, settle: float) -> asyncio.Task[int]:
    """Creates an upload of `length` bytes, starts a PATCH of `body` (slow: see `slow_body`) as a task,
    sends the gateway SIGTERM while it is in flight and waits `settle` seconds more. Returns the task
    (its result the PATCH's status), still running on `http` as long as `body` holds back."""
    async with http.post(f"{gw.url}/files", headers={**headers, "Upload-Length": str(length)}) as r:
        assert r.status == 201
        location = r.headers["Location"]

    async def patch() -> int:
        async with http.patch(location, data=body, headers={
                **headers, "Upload-Offset": "0", "Content-Length": str(length),
                "Content-Type": "application/offset+octet-stream"}) as r:
            return r.status

    inflight = asyncio.create_task(patch())
    await asyncio.sleep(0.5)
    assert gw.process is not None
    gw.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(settle)
    return inflight
