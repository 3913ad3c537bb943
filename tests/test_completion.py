"""Completion state machine (docs/architecture.md §3.4): exactly once, recovered after crashes,
never a false success."""

from __future__ import annotations

import asyncio
import os

from gateway.app import BACKGROUND
from gateway.core.errors import ErrorCode, UploadError
from gateway.http.keys import SERVICE
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.direct import confirm, put_part, sign_ok
from tests.support.gateway import Gateway, make_settings, running, upload_id
from tests.support.storage import sha256, stored_bytes
from tests.support.tokens import auth

PART = 5 * MiB
HINT = {"Upload-Part-Size": str(PART)}


async def left_completing(gateway: Gateway, data: bytes) -> str:
    """An upload whose last confirm moved it to `completing` but whose Complete never happened
    (the process died, or S3 was down at that moment)."""
    location = await gateway.create(len(data), **HINT)
    signed = await sign_ok(gateway, location, [1, 2])
    for _number, part in signed.items():
        assert await put_part(gateway, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
    store = gateway.app[SERVICE].store
    real_complete = store.complete

    async def s3_down(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise UploadError(ErrorCode.STORAGE_UNAVAILABLE, "injected: S3 unavailable")

    store.complete = s3_down  # type: ignore[method-assign]
    try:
        assert (await confirm(gateway, location, 1))[0] == 204
        assert await confirm(gateway, location, 2) == (204, str(len(data)))
    finally:
        store.complete = real_complete  # type: ignore[method-assign]
    return location


async def run_worker(gateway: Gateway) -> int:
    worker = gateway.app[BACKGROUND].completion
    worker.stale_after = 0
    return await worker.run_once()


async def test_worker_completes_what_a_request_left(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART + 100)
    location = await left_completing(gateway, data)
    row = await upload_row(db, upload_id(location))
    assert row["state"] == "completing"
    async with gateway.http.get(location, headers=auth()) as response:
        assert response.status == 409 and response.headers["Retry-After"]
    async with gateway.http.delete(location, headers=auth()) as response:
        assert response.status == 409 and response.headers["Retry-After"]
    assert await run_worker(gateway) >= 1
    assert (await upload_row(db, upload_id(location)))["state"] == "completed"
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


async def test_complete_succeeded_before_crash(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART + 100)
    location = await left_completing(gateway, data)
    row = await upload_row(db, upload_id(location))
    parts = await db.fetch("select number, etag from upload_parts where upload_id = $1 order by number", row["id"])
    # S3 completed the upload, then the process died before recording it: a retry sees NoSuchUpload.
    s3.complete_multipart_upload(Bucket=row["bucket"], Key=row["s3_key"], UploadId=row["multipart_id"],
                                 MultipartUpload={"Parts": [{"PartNumber": p["number"], "ETag": p["etag"]}
                                                            for p in parts]})
    await run_worker(gateway)
    assert (await upload_row(db, row["id"]))["state"] == "completed"
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


async def test_vanished_multipart_upload_is_failed_not_completed(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    location = await left_completing(gateway, os.urandom(PART + 100))
    row = await upload_row(db, upload_id(location))
    s3.abort_multipart_upload(Bucket=row["bucket"], Key=row["s3_key"], UploadId=row["multipart_id"])
    await run_worker(gateway)
    after = await upload_row(db, row["id"])
    assert after["state"] == "failed" and after["failure_reason"]
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.status == 410


async def test_worker_leases_rows(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    location = await left_completing(gateway, os.urandom(PART + 100))
    worker = gateway.app[BACKGROUND].completion
    worker.stale_after = 3600  # just claimed rows are not claimed again by another instance
    await db.execute("update uploads set completing_since = now() where id = $1", upload_id(location))
    assert await worker.run_once() == 0
    assert (await upload_row(db, upload_id(location)))["state"] == "completing"


async def test_a_download_takes_over_once_the_completion_lease_lapsed(stack, db, s3) -> None:  # type: ignore[no-untyped-def]
    """The instance that began completing died (here: its CompleteMultipartUpload failed and nobody
    renews the lease): the client's download finishes the upload seconds later, not after minutes."""
    async with running(make_settings(stack, completion_retry_after=3)) as gw:
        data = os.urandom(PART + 100)
        location = await left_completing(gw, data)
        async with gw.http.get(location, headers={**auth(), "Accept": "application/json"}) as response:
            assert response.status == 409  # the lease is still held
        await asyncio.sleep(3.5)
        async with gw.http.get(location, headers={**auth(), "Accept": "application/json"}) as response:
            assert response.status == 200, await response.text()
        row = await upload_row(db, upload_id(location))
        assert row["state"] == "completed"
        assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


async def test_a_long_complete_renews_its_lease(stack, db) -> None:  # type: ignore[no-untyped-def]
    """CompleteMultipartUpload of a large object can take minutes: meanwhile nobody else takes over."""
    async with running(make_settings(stack, completion_retry_after=3, complete_timeout=0.5)) as gw:
        store = gw.app[SERVICE].store
        real_complete = store.complete
        calls = []

        async def slow_complete(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(args)
            await asyncio.sleep(6)  # two lease periods
            return await real_complete(*args, **kwargs)

        store.complete = slow_complete  # type: ignore[method-assign]
        try:
            data = os.urandom(PART + 100)
            location = await gw.create(len(data), **HINT)
            signed = await sign_ok(gw, location, [1, 2])
            for number, part in signed.items():
                assert await put_part(gw, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
                assert (await confirm(gw, location, number))[0] == 204
            await asyncio.sleep(4)  # past one lease period: a stale lease would be taken over now
            async with gw.http.get(location, headers={**auth(), "Accept": "application/json"}) as response:
                assert response.status == 409
            assert await run_worker_with(gw, stale_after=3) == 0
            await asyncio.sleep(3)
            assert (await upload_row(db, upload_id(location)))["state"] == "completed"
            assert len(calls) == 1
        finally:
            store.complete = real_complete  # type: ignore[method-assign]


async def run_worker_with(gw: Gateway, stale_after: float) -> int:
    worker = gw.app[BACKGROUND].completion
    worker.stale_after = stale_after
    return await worker.run_once()
