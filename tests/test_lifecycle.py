"""Expiry and sweeping, events and webhooks, the pre-create hook, per-owner quotas."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.exceptions import ClientError

from gateway.app import BACKGROUND
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, start_gateway, upload_id
from tests.support.tokens import auth

PART = 5 * MiB
OCTETS = {"Content-Type": "application/offset+octet-stream"}
WEBHOOK_SECRET = "webhook-secret-" + "w" * 32


class Receiver:
    """A webhook / hook endpoint: records what it gets, answers what the test says."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answers to give, in order; 200 when empty
        self.reply: dict[str, Any] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response(self.reply, status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    target = Receiver()
    app = web.Application()
    app.router.add_post("/hook", target.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield target, str(server.make_url("/hook"))
    await server.close()


async def test_expired_upload_is_swept(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(3 * PART, **{"Upload-Part-Size": str(PART)})
    async with gateway.http.patch(location, data=os.urandom(1000), headers={
            **auth(), **OCTETS, "Upload-Offset": "0"}) as response:
        assert response.status == 204  # leaves a stash segment
    uid = upload_id(location)
    row = await upload_row(db, uid)
    stash_key = await db.fetchval("select s3_key from upload_stash where upload_id = $1", uid)
    await db.execute("update uploads set expires_at = now() - interval '1 second' where id = $1", uid)
    report = await gateway.app[BACKGROUND].sweeper.run_once()
    assert report.expired >= 1
    after = await upload_row(db, uid)
    assert after["state"] == "expired" and after["ended_at"] is not None
    with pytest.raises(ClientError):
        s3.list_parts(Bucket=row["bucket"], Key=row["s3_key"], UploadId=row["multipart_id"])
    with pytest.raises(ClientError):
        s3.head_object(Bucket=row["bucket"], Key=stash_key)
    assert await db.fetchval("select count(*) from events where upload_id = $1 and type = 'expired'", uid) == 1
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.status == 410


async def test_orphan_multipart_uploads_are_aborted(stack, db, s3) -> None:  # type: ignore[no-untyped-def]
    # The grace period stays on while the upload is created: the instance's own sweep at start-up could
    # otherwise see its multipart upload before its row exists (the race the grace period is for).
    async for gw in start_gateway(make_settings(stack)):
        live = await gw.create(PART)
        live_row = await upload_row(db, upload_id(live))
        # A crash between CreateMultipartUpload and the INSERT leaves an S3 upload nobody knows.
        orphan = s3.create_multipart_upload(Bucket=live_row["bucket"],
                                            Key=f"{gw.settings.s3_key_prefix}/zz/00orphan")
        sweeper = gw.app[BACKGROUND].sweeper
        sweeper.orphan_grace = 0
        sweeper.next_orphan_scan = 0  # the orphan scan runs once per grace period; this one is due now
        await sweeper.run_once()
        # Page through: SeaweedFS may truncate before it filters by prefix.
        pages = s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=live_row["bucket"], Prefix=gw.settings.s3_key_prefix + "/")
        ids = {u["UploadId"] for page in pages for u in page.get("Uploads", [])}
        assert live_row["multipart_id"] in ids and orphan["UploadId"] not in ids


async def test_tombstones_kept_then_purged(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    recent, old = await gateway.create(0), await gateway.create(0)
    await db.execute("update uploads set ended_at = now() - interval '31 days' where id = $1", upload_id(old))
    await gateway.app[BACKGROUND].sweeper.run_once()
    assert await db.fetchval("select count(*) from uploads where id = $1", upload_id(recent)) == 1
    assert await db.fetchval("select count(*) from uploads where id = $1", upload_id(old)) == 0


def _verify_signature(headers: dict[str, str], body: bytes) -> None:
    fields = dict(item.split("=", 1) for item in headers["Gateway-Signature"].split(","))
    expected = hmac.new(WEBHOOK_SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)


async def test_events_reach_webhooks_at_least_once(stack, receiver, db) -> None:  # type: ignore[no-untyped-def]
    target, url = receiver
    target.statuses = [500]  # the first delivery fails and must be retried
    settings = make_settings(stack, webhook_urls=(url,), webhook_secret=WEBHOOK_SECRET)
    async for gw in start_gateway(settings):
        location = await gw.create(0)  # created and completed at once
        dispatcher = gw.app[BACKGROUND].dispatcher
        assert dispatcher is not None
        for _ in range(40):
            await dispatcher.run_once()
            await db.execute("update events set next_attempt_at = now() where delivered_at is null")
            delivered = await db.fetchval(
                "select count(*) from events where upload_id = $1 and delivered_at is not null", upload_id(location)
            )
            if delivered == 2:
                break
            await asyncio.sleep(0.05)
        bodies = [json.loads(body) for _, body in target.requests]
        mine = [b for b in bodies if b["upload"]["id"] == upload_id(location)]
        assert sorted({b["type"] for b in mine}) == ["completed", "created"]
        assert len(target.requests) >= 3  # one failed attempt, then both events
        for headers, body in target.requests:
            _verify_signature(headers, body)
        assert mine[0]["upload"]["owner"] == {"iss": "https://issuer.test", "sub": "alice"}


async def test_pre_create_hook_rejects_and_adds_metadata(stack, receiver, db) -> None:  # type: ignore[no-untyped-def]
    target, url = receiver
    async for gw in start_gateway(make_settings(stack, pre_create_hook_url=url)):
        target.statuses = [403]
        target.reply = {"message": "executables are not allowed"}
        async with gw.http.post(gw.files(), headers={**auth(), "Upload-Length": "10"}) as response:
            assert response.status == 403
            error = (await response.json())["error"]
            assert error == {"code": "hook_rejected", "message": "executables are not allowed"}
        sent = json.loads(target.requests[-1][1])
        assert sent["owner"]["sub"] == "alice" and sent["length"] == 10
        # The hook sees the token's claims (to decide by tenant, plan, scopes...).
        assert sent["claims"]["sub"] == "alice" and sent["claims"]["aud"] and "exp" in sent["claims"]
        target.reply = {"metadata": {"tenant": "acme"}}
        location = await gw.create(10)
        metadata = (await upload_row(db, upload_id(location)))["metadata"]
        assert json.loads(metadata)["tenant"] == "acme"


async def test_pre_create_hook_down_is_503(stack) -> None:  # type: ignore[no-untyped-def]
    async for gw in start_gateway(make_settings(stack, pre_create_hook_url="http://127.0.0.1:9/hook")):
        async with gw.http.post(gw.files(), headers={**auth(), "Upload-Length": "10"}) as response:
            assert response.status == 503 and response.headers["Retry-After"]


async def test_quota_of_active_uploads_and_bytes(stack, db, s3) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(stack, max_active_uploads_per_owner=2, max_active_bytes_per_owner=30 * MiB)
    async for gw in start_gateway(settings):
        await gw.create(PART, subject="quota-user")
        await gw.create(PART, subject="quota-user")
        async with gw.http.post(gw.files(), headers={**auth("quota-user"), "Upload-Length": "10"}) as response:
            assert response.status == 403 and (await response.json())["error"]["code"] == "quota_exceeded"
        # Nothing is left behind in S3 for the refused creation.
        pages = s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=settings.s3_bucket, Prefix=settings.s3_key_prefix + "/")
        assert sum(len(page.get("Uploads", [])) for page in pages) == 2
        async with gw.http.post(gw.files(), headers={**auth("big-user"), "Upload-Length": str(31 * MiB)}) as r:
            assert r.status == 403
        await gw.create(0, subject="quota-other")  # other owners are not affected
        # Concurrent creations cannot overshoot the quota.
        results = []
        for response in await asyncio.gather(*(gw.http.post(gw.files(), headers={
                **auth("racer"), "Upload-Length": "10"}) for _ in range(6))):
            results.append(response.status)
            response.release()
        assert sorted(results) == [201, 201, 403, 403, 403, 403]
