"""Faults with real processes: kill -9 mid-upload, PostgreSQL and S3 going away, SIGTERM."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.client import DirectUploader, UploadFailed
from gateway.db.migrate import migrate
from gateway.embedded import EmbeddedPostgres, EmbeddedSeaweed, StackInfo, free_port
from tests.support import MiB
from tests.support.processes import GatewayProcess, patch_then_sigterm, slow_body
from tests.support.storage import stored_sha256
from tests.support.tokens import TUS, bearer, token

PART = 5 * MiB
TRANSIENT = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def headers(subject: str = "fault-tester") -> dict[str, str]:
    return {**bearer(subject, ttl=3600), **TUS}


@pytest.fixture
def gateway_process(stack: StackInfo, tmp_path: Path) -> Iterator[GatewayProcess]:
    # A kill between `completing` and CompleteMultipartUpload is healed by the completion worker.
    gw = GatewayProcess(stack, tmp_path, s3_key_prefix=f"faults-{os.getpid()}-{random.randrange(10**6)}",
                        completion_retry_after="2s")
    gw.start()
    yield gw
    gw.stop()


async def proxy_upload(gw: GatewayProcess, data: bytes, deadline: float) -> str:
    """A stock tus client's loop: create, then HEAD + PATCH chunks, resuming from HEAD after any error."""
    location = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        while time.monotonic() < deadline:
            try:
                if location is None:
                    async with http.post(f"{gw.url}/files", headers={
                            **headers(), "Upload-Length": str(len(data)), "Upload-Part-Size": str(PART)}) as r:
                        if r.status != 201:
                            raise aiohttp.ClientError(f"create answered {r.status}")
                        location = r.headers["Location"]
                async with http.head(location, headers=headers()) as r:
                    if r.status != 200:
                        raise aiohttp.ClientError(f"HEAD answered {r.status}")
                    offset = int(r.headers["Upload-Offset"])
                if offset == len(data):
                    return location
                chunk = data[offset:offset + 3 * MiB]
                async with http.patch(location, data=chunk, headers={
                        **headers(), "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream"}) as r:
                    await r.read()
            except TRANSIENT:
                await asyncio.sleep(0.3)
    raise AssertionError("proxy upload did not finish in time")


async def direct_upload(gw: GatewayProcess, path: Path, state: Path, deadline: float) -> str:
    """`gateway upload` re-run after each failure, as a user would: it resumes from the server's state."""
    while time.monotonic() < deadline:
        try:
            result = await DirectUploader(f"{gw.url}/files", path, token=token("fault-tester", ttl=3600),
                                          parallel=2, part_size=PART, state_file=state).upload()
            if result.state == "completed":
                return result.url
        except (UploadFailed, *TRANSIENT):
            pass
        await asyncio.sleep(0.3)
    raise AssertionError("direct upload did not finish in time")


async def test_kill_9_at_random_points_loses_nothing(gateway_process: GatewayProcess, db: Any, s3: Any,
                                                     tmp_path: Path) -> None:
    gw = gateway_process
    rng = random.Random(7)
    files = []
    for i in range(20):
        data = os.urandom(rng.randrange(6 * MiB, 14 * MiB))
        path = tmp_path / f"file-{i}.bin"
        path.write_bytes(data)
        files.append((path, data))
    deadline = time.monotonic() + 240
    uploads = [direct_upload(gw, path, tmp_path / f"state-{i}.json", deadline) if i % 2 == 0
               else proxy_upload(gw, data, deadline) for i, (path, data) in enumerate(files)]
    tasks = [asyncio.create_task(u) for u in uploads]
    kills = 0
    while not all(t.done() for t in tasks) and kills < 4:
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        gw.kill()
        kills += 1
        await asyncio.sleep(0.3)
        await asyncio.to_thread(gw.start)
    locations = await asyncio.gather(*tasks)
    assert kills >= 2
    for (path, data), location in zip(files, locations, strict=True):
        # completion may still be running after a kill
        assert await stored_sha256(db, s3, location, wait=20) == hashlib.sha256(data).hexdigest(), path.name


async def test_postgres_restart_gives_503s_and_loses_no_offset(stack: StackInfo, tmp_path: Path) -> None:
    port = free_port()
    postgres = EmbeddedPostgres(tmp_path / "pg", port=port)
    database_url = postgres.start()
    await migrate(database_url)
    gw = GatewayProcess(stack, tmp_path, database_url=database_url, db_pool_min="1")
    gw.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.post(f"{gw.url}/files", headers={**headers(), "Upload-Length": str(2 * PART),
                                                             "Upload-Part-Size": str(PART)}) as r:
                location = r.headers["Location"]
            data = os.urandom(2 * PART)
            async with http.patch(location, data=data[:PART], headers={
                    **headers(), "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}) as r:
                assert r.status == 204
            statuses: list[int] = []
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    for method, url, extra in (("HEAD", location, {}),
                                               ("POST", f"{gw.url}/files", {"Upload-Length": "10"})):
                        try:
                            async with http.request(method, url, headers={**headers(), **extra}) as r:
                                statuses.append(r.status)
                                if r.status == 503:
                                    assert r.headers["Retry-After"]
                        except TRANSIENT:
                            statuses.append(0)
                    await asyncio.sleep(0.02)

            loader = asyncio.create_task(load())
            await asyncio.sleep(0.5)
            await asyncio.to_thread(postgres.stop)
            await asyncio.sleep(2)
            await asyncio.to_thread(postgres.start)
            await asyncio.sleep(3)
            stop.set()
            await loader
            assert 503 in statuses and set(statuses) <= {200, 201, 503}
            assert statuses[-1] in (200, 201)  # recovered by itself
            async with http.head(location, headers=headers()) as r:
                assert r.status == 200 and r.headers["Upload-Offset"] == str(PART)
    finally:
        gw.stop()
        postgres.stop()


async def test_s3_outage_gives_503s_then_recovers(stack: StackInfo, tmp_path: Path) -> None:
    s3_port = free_port()
    seaweed = EmbeddedSeaweed(tmp_path / "s3", port=s3_port)
    endpoint, access_key, secret = seaweed.start()
    own = StackInfo(stack.database_url, endpoint, stack.s3_region, access_key, secret, "uploads")
    gw = GatewayProcess(own, tmp_path)
    gw.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            async with http.post(f"{gw.url}/files", headers={**headers(), "Upload-Length": str(PART + 10),
                                                             "Upload-Part-Size": str(PART)}) as r:
                location = r.headers["Location"]
            data = os.urandom(PART + 10)
            await asyncio.to_thread(seaweed.stop)
            async with http.post(f"{gw.url}/files", headers={**headers(), "Upload-Length": "10"}) as r:
                assert r.status == 503 and r.headers["Retry-After"]
                assert (await r.json())["error"]["code"] == "storage_unavailable"
            async with http.patch(location, data=data, headers={
                    **headers(), "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}) as r:
                assert r.status == 503
            async with http.head(location, headers=headers()) as r:
                assert r.status == 200 and r.headers["Upload-Offset"] == "0"  # HEAD never needs S3
            async with http.get(f"{gw.url}/readyz") as r:
                assert r.status == 503
            await asyncio.to_thread(seaweed.start)
            async with http.patch(location, data=data, headers={
                    **headers(), "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}) as r:
                assert r.status == 204 and r.headers["Upload-Offset"] == str(len(data))
            async with http.get(f"{gw.url}/readyz") as r:
                assert r.status == 200
    finally:
        gw.stop()
        seaweed.stop()


async def test_sigterm_lets_inflight_patch_finish(gateway_process: GatewayProcess) -> None:
    gw = gateway_process
    release = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        inflight = await patch_then_sigterm(gw, http, headers(), slow_body(os.urandom(PART), release), PART,
                                            settle=0.5)
        assert gw.process is not None
        with pytest.raises(TRANSIENT):  # no new requests once shutting down
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{gw.url}/healthz") as r:
                await r.read()
        release.set()
        assert await inflight == 204
        assert await asyncio.to_thread(gw.process.wait, 30) == 0
