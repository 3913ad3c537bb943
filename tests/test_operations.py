"""Operations: metrics, request ids, JSON logs, rate limits."""

from __future__ import annotations

import json
import logging

from gateway.http.observability import REQUEST_ID
from gateway.logs import JsonFormatter
from tests.support.gateway import Gateway, make_settings, start_gateway
from tests.support.tokens import auth


async def test_metrics_exposition(gateway: Gateway) -> None:
    await gateway.create(0)
    async with gateway.http.get(f"{gateway.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'gateway_requests_total{method="POST",route="tus.collection",status="201"}' in text
    assert 'gateway_uploads{state="completed"}' in text
    assert 'gateway_s3_call_seconds_count{operation="PutObject"}' in text
    assert 'gateway_db_pool_connections{kind="open"}' in text
    assert "gateway_webhook_backlog" in text


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
