"""A gateway process on an embedded stack, for benchmarks: real PostgreSQL, real SeaweedFS, `gateway serve`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import cpu_seconds
from gateway.cli import mint_token
from gateway.db.migrate import migrate
from gateway.embedded import EmbeddedStack, StackInfo, free_port

SECRET = "bench-secret-" + "b" * 40
AUDIENCE = "bench"


@dataclass
class RunningGateway:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    stack: StackInfo

    def cpu_seconds(self) -> float:
        """CPU time of the gateway process so far."""
        return cpu_seconds(self.process.pid)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def gateway_env(stack: StackInfo, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({
        "GATEWAY_DATABASE_URL": stack.database_url, "GATEWAY_S3_ENDPOINT_URL": stack.s3_endpoint_url,
        "GATEWAY_S3_BUCKET": stack.s3_bucket, "GATEWAY_S3_REGION": stack.s3_region,
        "GATEWAY_S3_ACCESS_KEY_ID": stack.s3_access_key_id,
        "GATEWAY_S3_SECRET_ACCESS_KEY": stack.s3_secret_access_key,
        "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_JWT_AUDIENCE": AUDIENCE, "GATEWAY_JWT_ISSUER": "bench",
        "GATEWAY_PORT": str(port), "GATEWAY_HOST": "127.0.0.1", "GATEWAY_DB_POOL_MAX": "40", **extra,
    })
    return env


@contextmanager
def running_gateway(data_dir: Path, **extra_env: str) -> Iterator[RunningGateway]:
    with EmbeddedStack(data_dir) as stack, open(data_dir / "gateway.log", "wb") as log:
        asyncio.run(migrate(stack.database_url))
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"],
                                   env=gateway_env(stack, port, **extra_env),
                                   stdout=subprocess.DEVNULL, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{url}/readyz", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("the gateway did not become ready; see gateway.log") from None
                    time.sleep(0.2)
            token = mint_token(SECRET, "bench-user", audience=AUDIENCE, issuer="bench", ttl=6 * 3600)
            yield RunningGateway(url, token, process, stack)
        finally:
            process.terminate()
            process.wait(15)
