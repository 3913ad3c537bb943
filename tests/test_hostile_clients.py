"""Hostile and broken clients: what they observe, and that the gateway stays healthy behind them.

- slow clients (`gateway serve` with short limits, real sockets): half a request head is cut after
  GATEWAY_HEADER_TIMEOUT, an idle keep-alive connection after GATEWAY_KEEPALIVE_TIMEOUT, a stalled JSON
  body answers 408 `request_timeout` and closes within GATEWAY_BODY_IDLE_TIMEOUT (nothing changes in the
  upload), and connections beyond GATEWAY_MAX_CONNECTIONS are closed at once while the server keeps
  answering;
- edge values: a validly signed token whose `exp` (or `nbf`/`iat`, or a limit claim) is an absurd
  number is a 401 (or accepted), never a 500;
- a client that resets mid-JSON-body is an info line and a 400 in the request metric, not an ERROR
  traceback counted as a 5xx;
- log forging: control characters in a request path are escaped in the text log format (one line per
  record); the JSON format escapes them by construction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import ClientSession
from yarl import URL

from gateway.embedded import StackInfo
from gateway.http.observability import REQUEST_ID
from gateway.logs import JsonFormatter, TextFormatter
from gateway.metrics import REQUESTS
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, running
from tests.support.processes import GatewayProcess
from tests.support.tokens import TUS, auth, bearer, token

PART = 5 * MiB
HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 3.0
BODY_IDLE_TIMEOUT = 1.0
MAX_CONNECTIONS = 20
# Scheduling noise on a loaded 2-core machine.
SLACK = 1.5


@pytest.fixture(scope="module")
def served(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`gateway serve` with short connection limits, access log on, text log format."""
    gw = GatewayProcess(stack, tmp_path_factory.mktemp("hostile"), header_timeout=str(HEADER_TIMEOUT),
                        keepalive_timeout=str(KEEPALIVE_TIMEOUT), body_idle_timeout=str(BODY_IDLE_TIMEOUT),
                        max_connections=str(MAX_CONNECTIONS), log_format="text", access_log="true")
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parsed = URL(url)
    return await asyncio.open_connection(parsed.host, parsed.port)


async def _until_closed(reader: asyncio.StreamReader, within: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed the connection (None: still open after `within`), and what it sent."""
    started = time.monotonic()
    received = b""
    while True:
        left = within - (time.monotonic() - started)
        if left <= 0:
            return None, received
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return None, received
        except ConnectionError:
            return time.monotonic() - started, received
        if not chunk:
            return time.monotonic() - started, received
        received += chunk


def _head(method: str, path: str, host: str, extra: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in extra.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status_and_body(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split(" ")[1]), headers, body


async def _create(url: str, base: str = "/files") -> str:
    async with ClientSession() as http, http.post(
            f"{url}{base}", headers=auth(**{"Upload-Length": str(2 * PART), "Upload-Part-Size": str(PART)})) as r:
        assert r.status == 201, await r.text()
        return URL(r.headers["Location"]).path


# -- 3. slow clients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("trickle", [False, True])
async def test_an_incomplete_request_head_is_cut_after_the_header_timeout(served: GatewayProcess,
                                                                         trickle: bool) -> None:
    reader, writer = await _connect(served.url)
    try:
        writer.write(b"GET /heal")
        await writer.drain()
        if trickle:  # slowloris: a byte now and then never completes the head, and must not extend it
            async def drip() -> None:
                for byte in b"thz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                    await asyncio.sleep(0.2)
                    writer.write(bytes([byte]))
            dripping = asyncio.create_task(drip())
        closed, received = await _until_closed(reader, KEEPALIVE_TIMEOUT + 5)
        if trickle:
            dripping.cancel()
    finally:
        writer.close()
    assert closed is not None, "the server kept an incomplete request head open"
    # Well before the keep-alive timeout: the header timeout cut it.
    assert HEADER_TIMEOUT - 0.2 <= closed <= HEADER_TIMEOUT + SLACK, closed
    assert received == b""  # closed, not answered


async def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout(served: GatewayProcess) -> None:
    reader, writer = await _connect(served.url)
    try:
        for _ in range(2):  # a reused connection still answers; then it idles
            writer.write(_head("GET", "/healthz", "x", {}))
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(_status_and_body(head)[1]["content-length"])
            await reader.readexactly(length)
        closed, received = await _until_closed(reader, KEEPALIVE_TIMEOUT + 5)
    finally:
        writer.close()
    assert closed is not None, "an idle keep-alive connection was kept open"
    # Idle is not an incomplete head: the keep-alive timeout applies, not the (shorter) header timeout.
    assert KEEPALIVE_TIMEOUT - 0.5 <= closed <= KEEPALIVE_TIMEOUT + SLACK, closed
    assert received == b""


@pytest.mark.parametrize("endpoint", ["sign", "confirm", "companion.create", "companion.complete"])
async def test_a_stalled_json_body_is_408_and_closed(served: GatewayProcess, stack: StackInfo,
                                                     endpoint: str) -> None:
    async with ClientSession() as http, http.post(f"{served.url}/s3/multipart", headers=bearer(),
                         json={"filename": "a.bin", "type": "application/pdf"}) as r:
        assert r.status == 200, await r.text()
        companion = await r.json()
    location = await _create(served.url)
    upload = location.rsplit("/", 1)[1]
    before = dict(await upload_row(stack.database_url, upload) or {})
    companion_before = dict(await upload_row(stack.database_url, companion["uploadId"]) or {})
    method, path = {
        "sign": ("POST", f"{location}/parts"), "confirm": ("PUT", f"{location}/parts"),
        "companion.create": ("POST", "/s3/multipart"),
        "companion.complete": ("POST", f"/s3/multipart/{companion['uploadId']}/complete?key={companion['key']}"),
    }[endpoint]
    reader, writer = await _connect(served.url)
    try:
        writer.write(_head(method, path, "x", {**bearer(), "Content-Type": "application/json",
                                               "Content-Length": "100"}) + b'{"parts"')
        await writer.drain()
        started = time.monotonic()
        closed, answer = await _until_closed(reader, BODY_IDLE_TIMEOUT + 10)
    finally:
        writer.close()
    assert closed is not None, "a stalled JSON body kept the connection open"
    assert BODY_IDLE_TIMEOUT - 0.2 <= time.monotonic() - started <= BODY_IDLE_TIMEOUT + SLACK, closed
    status, headers, body = _status_and_body(answer)
    assert status == 408, answer
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert dict(await upload_row(stack.database_url, upload) or {}) == before
    assert dict(await upload_row(stack.database_url, companion["uploadId"]) or {}) == companion_before


async def test_connections_beyond_the_limit_are_closed_at_once(served: GatewayProcess) -> None:
    connections = [await _connect(served.url) for _ in range(2 * MAX_CONNECTIONS)]
    try:
        results = await asyncio.gather(*(_until_closed(reader, 1.0) for reader, _ in connections))
        still_open = [i for i, (closed, _) in enumerate(results) if closed is None]
        assert len(still_open) == MAX_CONNECTIONS, results  # the first ones; the rest were closed at accept
        assert still_open == list(range(MAX_CONNECTIONS))
        assert all(received == b"" for _, received in results)
        # Full: a new connection is closed as well ...
        reader, writer = await _connect(served.url)
        writer.write(_head("GET", "/healthz", "x", {}))
        assert (await _until_closed(reader, 2.0))[0] is not None
        writer.close()
        # ... until some close; then new requests are answered again.
        for _, writer in connections[:5]:
            writer.close()
        await asyncio.sleep(0.3)
        status = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{served.url}/healthz", timeout=5).status)
        assert status == 200
        # The ops port keeps its own count: probes and scrapes still work while the API port is full.
        scrape = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{served.metrics_url}/metrics",
                                                                         timeout=5).read().decode())
    finally:
        for _, writer in connections:
            writer.close()
    refused = [line for line in scrape.splitlines()
               if line.startswith('gateway_connections_closed_total{reason="max_connections"}')]
    assert refused and float(refused[0].split()[-1]) >= MAX_CONNECTIONS + 1, refused
    assert "connection limit reached" in served.log.read_text()


# -- 9. edge values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("claim", "value", "status"), [
    pytest.param(claim, value, status, id=f"{claim}={label}") for claim, value, label, status in [
        ("exp", 10**400, "1e400", 401), ("exp", 10**20, "1e20", 401), ("exp", float("inf"), "inf", 401),
        ("exp", float("nan"), "nan", 401), ("nbf", 10**400, "1e400", 401), ("iat", 10**400, "1e400", 401),
        ("nbf", -(10**400), "-1e400", 201), ("iat", -(10**400), "-1e400", 201),
        ("upload_max_size", 10**400, "1e400", 201),
    ]])
async def test_absurd_numeric_claims_are_never_a_500(stack: StackInfo, claim: str, value: Any,
                                                     status: int) -> None:
    async with running(make_settings(stack, jwt_max_upload_size_claim="upload_max_size")) as gw:
        headers = {"Authorization": f"Bearer {token(**{claim: value})}"}
        for _ in range(2):  # the second time from the verified-token cache, if it was accepted
            async with gw.http.post(gw.files(), headers={**headers, **TUS, "Upload-Length": "10"}) as response:
                assert response.status == status, await response.text()
                if status == 401:
                    error = (await response.json())["error"]
                    assert error["code"] == "unauthorized"
                    if claim == "exp" and value == 10**400:
                        assert error["message"] == "token exp out of range"


async def _metric_samples(route: str, method: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in REQUESTS.collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_total") and labels["route"] == route and labels["method"] == method:
                samples[labels["status"]] = sample.value
    return samples


@pytest.fixture
async def as_served(stack: StackInfo) -> AsyncIterator[Gateway]:
    """In process, on the runner `gateway serve` uses: a handler keeps running when its client is gone."""
    async with running(make_settings(stack), handler_cancellation=False) as gw:
        yield gw


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_client_gone_mid_json_body_is_not_an_error(as_served: Gateway, caplog: pytest.LogCaptureFixture,
                                                           how: str) -> None:
    gateway = as_served
    location = URL(await gateway.create(2 * PART, **{"Upload-Part-Size": str(PART)})).path
    before = await _metric_samples("parts.collection", "POST")
    _, writer = await _connect(gateway.url)
    caplog.set_level(logging.INFO)
    writer.write(_head("POST", f"{location}/parts", "x", {**bearer(), "Content-Type": "application/json",
                                                          "Content-Length": "1000"}) + b'{"parts": ')
    await writer.drain()
    await asyncio.sleep(0.2)
    if how == "reset":  # RST instead of FIN
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    deadline = time.monotonic() + 10
    while (after := await _metric_samples("parts.collection", "POST")) == before:
        assert time.monotonic() < deadline, "the request was never counted"
        await asyncio.sleep(0.05)
    counted = {status: n - before.get(status, 0) for status, n in after.items() if n != before.get(status, 0)}
    assert counted == {"400": 1}, counted
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert any("ended early" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


# -- 10. log forging ------------------------------------------------------------------------------------


async def test_control_characters_in_a_path_are_escaped_in_the_text_log(served: GatewayProcess) -> None:
    marker = f"forged{time.monotonic_ns()}"
    path = f"/files/abc%0D%0A2026-01-01%2000:00:00,000%20INFO%20gateway.access:%20{marker}%1B[31m%E2%80%A8%00"
    async with ClientSession() as http, http.get(URL(f"{served.url}{path}", encoded=True),
                                                 headers=TUS) as response:
        assert response.status == 404
    # A literal CR in the request line: aiohttp's parser answers 400 before any handler runs; that is one
    # info line too (aiohttp itself would log an ERROR traceback, with the raw line in it).
    raw_marker = f"raw{time.monotonic_ns()}"
    reader, writer = await _connect(served.url)
    writer.write(f"GET /files/x\r\x1b[2J{raw_marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    _, answer = await _until_closed(reader, 5)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400", answer
    deadline = time.monotonic() + 5
    while raw_marker not in served.log.read_text() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    log = served.log.read_text()
    lines = [line for line in log.splitlines() if marker in line]
    assert len(lines) == 1, lines
    line = lines[0]
    assert " INFO gateway.access: GET /files/abc\\r\\n2026-01-01 00:00:00,000 INFO gateway.access: " in line
    assert "\\x1b[31m\\u2028\\x00 404 " in line
    assert not any(ch in line for ch in "\r\x1b\x00\u2028")
    raw_lines = [line for line in log.splitlines() if raw_marker in line]
    assert len(raw_lines) == 1, raw_lines
    assert " INFO gateway.http.connections: malformed request from " in raw_lines[0], raw_lines
    assert "\x1b" not in raw_lines[0] and "Traceback" not in log


def _record(message: str, *args: Any, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_text_format_keeps_one_record_per_line_start() -> None:
    try:
        raise ValueError("bad path /x\n2026-01-01 00:00:00,000 INFO gateway.access: forged")
    except ValueError as caught:
        exc = caught
    text = TextFormatter().format(_record("GET %s\t%s", "/a\r\nforged\x85\u2029", "\x7f", exc=exc))
    first, *rest = text.split("\n")
    assert first.endswith("WARNING gateway.test: GET /a\\r\\nforged\\x85\\u2029\\t\\x7f")
    # The traceback keeps its lines (humans read it), each indented: none can pass for a record.
    assert rest and all(line.startswith("  ") for line in rest), rest
    assert any("forged" in line for line in rest)
    assert len(text.splitlines()) == len(text.split("\n"))  # no other line breaks (\r, \x85, \u2028 ...)


def test_json_format_is_one_line_whatever_the_message() -> None:
    token_ = REQUEST_ID.set("req-1")
    try:
        line = JsonFormatter().format(_record("GET %s", "/a\r\nforged\u2028\x00"))
    finally:
        REQUEST_ID.reset(token_)
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert json.loads(line)["message"] == "GET /a\r\nforged\u2028\x00"

