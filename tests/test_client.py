"""The direct-path client (`gateway.client`) and `gateway upload` against real Postgres and SeaweedFS."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import asyncpg
import pytest
from aiohttp import ClientOSError, ClientSession, TraceConfig, TraceRequestEndParams

from gateway.client import DirectUploader, UploadFailed, UploadResult
from gateway.client.api import GatewayApi, SignedPart, Status
from gateway.client.state import ResumeState, fingerprint
from gateway.client.transfer import PartTransfer
from tests.support import MiB
from tests.support.gateway import Gateway
from tests.support.storage import stored_sha256
from tests.support.tokens import auth, token

PART = 5 * MiB


class Interrupted(Exception):
    pass


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def counting_s3_puts(puts: list[int], *, interrupt_after: int | None = None) -> TraceConfig:
    """Record the part number of every PUT that S3 answered (presigned part URLs carry partNumber)."""

    async def on_end(session: ClientSession, context: SimpleNamespace, params: TraceRequestEndParams) -> None:
        if params.method == "PUT" and "partNumber" in params.url.query:
            puts.append(int(params.url.query["partNumber"]))
            if len(puts) == interrupt_after:
                raise Interrupted

    trace = TraceConfig()
    trace.on_request_end.append(on_end)
    return trace


async def upload(gateway: Gateway, path: Path, state: Path, **options: Any) -> UploadResult:
    return await DirectUploader(gateway.files(), path, token=token(), part_size=PART, state_file=state,
                                **options).upload()


async def test_parallel_upload_lands_in_s3_intact(gateway: Gateway, db: asyncpg.Connection, s3: Any,
                                                  tmp_path: Path) -> None:
    path, state = tmp_path / "data.bin", tmp_path / "state.json"
    digest = random_file(path, 23 * MiB)
    seen: list[tuple[int, int]] = []
    result = await upload(gateway, path, state, parallel=4, on_progress=lambda done, total: seen.append((done, total)))
    assert (result.state, result.length, result.sent, result.resumed) == ("completed", 23 * MiB, 23 * MiB, False)
    assert await stored_sha256(db, s3, result.url) == digest
    async with gateway.http.get(f"{result.url}/parts", headers=auth()) as response:
        listed = await response.json()
    assert listed["part_size"] == PART  # the hint was honoured
    assert [p["size"] for p in listed["parts"]] == [PART] * 4 + [3 * MiB]
    assert seen[-1] == (23 * MiB, 23 * MiB) and all(done <= total for done, total in seen)
    assert json.loads(state.read_text()) == {}  # nothing left to resume


async def test_interrupted_upload_resumes_with_the_missing_parts_only(gateway: Gateway, db: asyncpg.Connection,
                                                                      s3: Any, tmp_path: Path) -> None:
    path, state = tmp_path / "data.bin", tmp_path / "state.json"
    digest = random_file(path, 23 * MiB)  # parts 1-4 of 5 MiB, part 5 of 3 MiB
    first: list[int] = []
    async with ClientSession(trace_configs=[counting_s3_puts(first, interrupt_after=2)]) as session:
        with pytest.raises(Interrupted):
            await upload(gateway, path, state, parallel=2, session=session)
    (url,) = [entry["url"] for entry in json.loads(state.read_text()).values()]
    async with gateway.http.get(f"{url}/parts", headers=auth()) as response:
        held = {p["number"] for p in (await response.json())["parts"]}
    # Two PUTs were answered; a third at most had started. Parts whose confirm the interrupt cut off
    # are found by the gateway's reconcile.
    assert 2 <= len(held) <= 3

    second: list[int] = []
    async with ClientSession(trace_configs=[counting_s3_puts(second)]) as session:
        result = await upload(gateway, path, state, parallel=2, session=session)
    assert result.resumed and result.url == url and result.state == "completed"
    assert sorted(second) == sorted({1, 2, 3, 4, 5} - held)
    assert result.sent == sum(3 * MiB if n == 5 else PART for n in second)
    assert await stored_sha256(db, s3, url) == digest
    assert json.loads(state.read_text()) == {}


async def test_parts_confirmed_since_the_listing_are_dropped(gateway: Gateway, db: asyncpg.Connection, s3: Any,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = tmp_path / "data.bin", tmp_path / "state.json"
    digest = random_file(path, 11 * MiB)  # parts of 5, 5 and 1 MiB
    first: list[int] = []
    async with ClientSession(trace_configs=[counting_s3_puts(first, interrupt_after=1)]) as session:
        with pytest.raises(Interrupted):
            await upload(gateway, path, state, parallel=1, session=session)
    status = GatewayApi.status

    async def stale_status(self: GatewayApi, url: str) -> Status:
        # As if part 1 were confirmed (here: by HEAD's reconcile) after this listing was taken.
        return dataclasses.replace(await status(self, url), confirmed=frozenset())

    monkeypatch.setattr(GatewayApi, "status", stale_status)
    second: list[int] = []
    async with ClientSession(trace_configs=[counting_s3_puts(second)]) as session:
        result = await upload(gateway, path, state, parallel=1, session=session)
    assert first == [1] and second == [2, 3]  # the 409 part_confirmed on signing dropped part 1
    assert result.state == "completed" and result.sent == 6 * MiB
    assert await stored_sha256(db, s3, result.url) == digest


async def test_an_upload_that_is_gone_starts_over(gateway: Gateway, db: asyncpg.Connection, s3: Any,
                                                  tmp_path: Path) -> None:
    path, state = tmp_path / "data.bin", tmp_path / "state.json"
    digest = random_file(path, 6 * MiB)
    old = await gateway.create(6 * MiB)
    async with gateway.http.delete(old, headers=auth()) as response:
        assert response.status == 204
    ResumeState(state).put(fingerprint(path, path.stat(), gateway.files()), old)
    result = await upload(gateway, path, state, parallel=2)
    assert not result.resumed and result.url != old and result.state == "completed"
    assert await stored_sha256(db, s3, result.url) == digest


async def test_a_refused_url_is_signed_again(gateway: Gateway, db: asyncpg.Connection, s3: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = tmp_path / "data.bin", tmp_path / "state.json"
    digest = random_file(path, 6 * MiB)
    sign = GatewayApi.sign
    batches: list[list[int]] = []

    async def sign_one_badly(self: GatewayApi, url: str, numbers: list[int]) -> list[SignedPart]:
        parts = await sign(self, url, numbers)
        if not batches:  # S3 answers 403 SignatureDoesNotMatch, as for an expired URL
            parts[0] = dataclasses.replace(parts[0], url=parts[0].url.replace("Signature=", "Signature=0"))
        batches.append(numbers)
        return parts

    monkeypatch.setattr(GatewayApi, "sign", sign_one_badly)
    result = await upload(gateway, path, state, parallel=2)
    assert result.state == "completed"
    assert batches[0] == [1, 2] and [1] in batches[1:]
    assert await stored_sha256(db, s3, result.url) == digest


async def test_a_dropped_connection_is_retried_with_a_new_url(gateway: Gateway, db: asyncpg.Connection, s3: Any,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = tmp_path / "data.bin", tmp_path / "state.json"
    digest = random_file(path, 6 * MiB)
    put, sign = PartTransfer._put, GatewayApi.sign
    puts: list[int] = []
    batches: list[list[int]] = []

    async def flaky_put(self: PartTransfer, part: SignedPart) -> tuple[int, bytes]:
        puts.append(part.number)
        if len(puts) == 1:
            raise ClientOSError(104, "Connection reset by peer")
        return await put(self, part)

    async def recording_sign(self: GatewayApi, url: str, numbers: list[int]) -> list[SignedPart]:
        batches.append(numbers)
        return await sign(self, url, numbers)

    monkeypatch.setattr(PartTransfer, "_put", flaky_put)
    monkeypatch.setattr(GatewayApi, "sign", recording_sign)
    result = await upload(gateway, path, state, parallel=1)
    assert result.state == "completed" and puts == [1, 1, 2] and batches == [[1, 2], [1]]
    assert await stored_sha256(db, s3, result.url) == digest


async def test_a_file_that_shrinks_mid_upload_fails_clearly(gateway: Gateway, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = tmp_path / "data.bin", tmp_path / "state.json"
    random_file(path, 6 * MiB)
    read = PartTransfer._read

    async def read_after_truncation(self: PartTransfer, file: BinaryIO, part: SignedPart) -> AsyncIterator[bytes]:
        os.truncate(path, 1 * MiB)  # after the size check, while the body streams
        async for chunk in read(self, file, part):
            yield chunk

    monkeypatch.setattr(PartTransfer, "_read", read_after_truncation)
    with pytest.raises(UploadFailed, match="became shorter during the upload"):
        await upload(gateway, path, state, parallel=1)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "upload", *args, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_uploads_a_file(gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "cli.bin"
    digest = random_file(path, 11 * MiB)
    code, out, err = await run_cli(str(path), "--url", gateway.files(), "--parallel", "4", "--part-size", "5MiB",
                                   "--state-file", str(tmp_path / "state.json"), env={"GATEWAY_TOKEN": token()})
    assert code == 0, err
    url = out.strip()
    assert url.startswith(gateway.files("/")) and "uploaded" in err
    async with gateway.http.get(url, headers={**auth(), "Accept": "application/json"}) as response:
        download = (await response.json())["url"]
    async with gateway.http.get(download) as response:
        assert hashlib.sha256(await response.read()).hexdigest() == digest


async def test_cli_reports_a_bad_token_without_a_traceback(gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "cli.bin"
    random_file(path, 1 * MiB)
    code, out, err = await run_cli(str(path), "--url", gateway.files(), "--token", token(secret="y" * 40),
                                   "--state-file", str(tmp_path / "state.json"))
    assert code != 0 and out == ""
    assert "401 unauthorized" in err and "Traceback" not in err
