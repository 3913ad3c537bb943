"""Operations: metrics (on the ops port), readiness and draining, request ids, JSON logs, rate limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from gateway import app as gateway_app
from gateway.db.repository import PgUploadRepository
from gateway.http.keys import DRAINING, READINESS_CHECKS
from gateway.http.observability import REQUEST_ID
from gateway.http.routes import ops_app
from gateway.logs import JsonFormatter
from tests.support.gateway import Gateway, make_settings, start_gateway
from tests.support.tokens import auth


@contextlib.asynccontextmanager
async def ops_port(gateway: Gateway) -> AsyncIterator[str]:
    """The ops listener of an in-process gateway (`gateway serve` starts it on GATEWAY_METRICS_PORT)."""
    server = TestServer(ops_app(gateway.app), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_metrics_exposition(gateway: Gateway) -> None:
    await gateway.create(0)
    async with ops_port(gateway) as ops, gateway.http.get(f"{ops}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'gateway_requests_total{method="POST",route="tus.collection",status="201"}' in text
    assert 'gateway_uploads{state="completed"}' in text
    assert 'gateway_s3_call_seconds_count{operation="PutObject"}' in text
    assert 'gateway_db_pool_connections{kind="open"}' in text
    assert "gateway_webhook_backlog" in text


async def test_metrics_are_not_public_on_the_api_port(gateway: Gateway) -> None:
    for headers in ({}, auth("alice")):
        async with gateway.http.get(f"{gateway.url}/metrics", headers=headers) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"


async def test_sql_gauges_are_sampled_at_most_every_few_seconds(gateway: Gateway,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    count_by_state = PgUploadRepository.count_by_state

    async def counted(self: PgUploadRepository) -> dict[str, int]:
        calls.append(1)
        return await count_by_state(self)

    monkeypatch.setattr(PgUploadRepository, "count_by_state", counted)
    async with ops_port(gateway) as ops:
        for _ in range(3):
            async with gateway.http.get(f"{ops}/metrics") as response:
                assert response.status == 200
        assert len(calls) == 1
        monkeypatch.setattr(gateway_app, "GAUGE_SQL_EVERY", 0.0)
        async with gateway.http.get(f"{ops}/metrics") as response:
            assert response.status == 200
        assert len(calls) == 2


async def test_readyz_probes_run_at_once_and_draining_answers_503(gateway: Gateway) -> None:
    async def slow() -> None:
        await asyncio.sleep(10)

    checks = gateway.app[READINESS_CHECKS]
    saved = dict(checks)
    checks.update(postgres=slow, s3=slow)
    try:
        started = time.monotonic()
        async with gateway.http.get(f"{gateway.url}/readyz") as response:
            assert response.status == 503 and response.headers["Retry-After"]
            assert (await response.json())["failing"] == {"postgres": "TimeoutError", "s3": "TimeoutError"}
        assert time.monotonic() - started < 3.5  # 2 s each, concurrently
    finally:
        checks.update(saved)
    gateway.app[DRAINING].set()
    async with ops_port(gateway) as ops:
        for url in (gateway.url, ops):
            async with gateway.http.get(f"{url}/readyz") as response:
                assert response.status == 503 and await response.json() == {"status": "draining"}
    async with gateway.http.get(f"{gateway.url}/healthz") as response:
        assert response.status == 200 and response.headers["Connection"] == "close"  # keep-alive pools move on


async def test_request_ids(gateway: Gateway) -> None:
    async with gateway.http.get(f"{gateway.url}/healthz", headers={"X-Request-Id": "abc-123"}) as response:
        assert response.headers["X-Request-Id"] == "abc-123"
    async with gateway.http.get(f"{gateway.url}/healthz", headers={"X-Request-Id": "bad id\u00e9"}) as response:
        generated = response.headers["X-Request-Id"]
        assert generated != "bad id\u00e9" and len(generated) == 32
    async with gateway.http.post(gateway.files(), headers={"Tus-Resumable": "1.0.0"}) as response:
        assert response.status == 401 and response.headers["X-Request-Id"]  # errors carry one too


def test_json_log_lines_carry_the_request_id() -> None:
    token = REQUEST_ID.set("req-42")
    try:
        record = logging.makeLogRecord({"name": "gateway.test", "levelname": "INFO", "msg": "hello %s",
                                        "args": ("world",), "route": "tus.upload"})
        line = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["message"] == "hello world" and line["request_id"] == "req-42" and line["route"] == "tus.upload"


async def test_rate_limits(stack) -> None:  # type: ignore[no-untyped-def]
    async for gw in start_gateway(make_settings(stack, rate_limit_parts=1, rate_limit_head=1)):
        location = await gw.create(10 * 1024 * 1024, subject="busy")
        statuses = []
        for _ in range(4):
            async with gw.http.get(f"{location}/parts", headers=auth("busy")) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
                    assert (await response.json())["error"]["code"] == "rate_limited"
        assert statuses[:2] == [200, 200] and 429 in statuses[2:]
        heads = []
        for _ in range(4):
            async with gw.http.head(location, headers=auth("busy")) as response:
                heads.append(response.status)
        # HEAD is throttled with 423, which tus clients retry, never with 429/503.
        assert heads[:2] == [200, 200] and set(heads[2:]) == {423}
        async with gw.http.get(f"{location}/parts", headers=auth("calm")) as response:
            assert response.status == 404  # another owner has its own bucket (and no access)
