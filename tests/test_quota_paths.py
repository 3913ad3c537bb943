"""The byte quota holds on every way an upload gets a length: creation, a later declaration by tus PATCH,
by the sign request, by the IETF draft's Upload-Complete, and on what a deferred upload (Companion's
included) may write before it declares one; concurrent declarations cannot overshoot."""

from __future__ import annotations

import asyncio
import os

from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, running, upload_id
from tests.support.tokens import auth

PART = 5 * MiB
QUOTA = 30 * MiB
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def quota_settings(stack):  # type: ignore[no-untyped-def]
    return make_settings(stack, max_active_uploads_per_owner=100, max_active_bytes_per_owner=QUOTA)


async def fill(gw: Gateway, subject: str, length: int) -> str:
    return await gw.create(length, subject=subject, **{"Upload-Part-Size": str(PART)})


async def test_declaring_a_length_later_obeys_the_quota(stack, db) -> None:  # type: ignore[no-untyped-def]
    """The issue's repro: a deferred upload's length declared through the sign request."""
    async with running(quota_settings(stack)) as gw:
        await fill(gw, "q-sign", 25 * MiB)
        deferred = await gw.create(None, subject="q-sign")
        async with gw.http.post(f"{deferred}/parts", json={"parts": [], "length": 671088640000},
                                headers=auth("q-sign")) as response:
            # Over both the size limit and the quota: refused, and nothing changed.
            assert response.status in (403, 413), await response.text()
        async with gw.http.post(f"{deferred}/parts", json={"parts": [], "length": 6 * MiB},
                                headers=auth("q-sign")) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "quota_exceeded"
        assert (await upload_row(db, upload_id(deferred)))["length"] is None
        async with gw.http.post(f"{deferred}/parts", json={"parts": [], "length": 5 * MiB},
                                headers=auth("q-sign")) as response:
            assert response.status == 200, await response.text()


async def test_tus_upload_length_on_patch_obeys_the_quota(stack, db) -> None:  # type: ignore[no-untyped-def]
    async with running(quota_settings(stack)) as gw:
        await fill(gw, "q-patch", 25 * MiB)
        deferred = await gw.create(None, subject="q-patch")
        async with gw.http.patch(deferred, data=b"x" * 100, headers={
                **auth("q-patch"), **OCTETS, "Upload-Offset": "0", "Upload-Length": str(6 * MiB)}) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "quota_exceeded"
        row = await upload_row(db, upload_id(deferred))
        assert row["length"] is None and row["prefix_parts"] == 0
        # Without a declaration, the bytes a deferred upload takes stop where the quota ends.
        async with gw.http.patch(deferred, data=b"x" * (6 * MiB), headers={
                **auth("q-patch"), **OCTETS, "Upload-Offset": "0"}) as response:
            assert response.status == 403


async def test_ietf_upload_complete_obeys_the_quota(stack, db) -> None:  # type: ignore[no-untyped-def]
    async with running(quota_settings(stack)) as gw:
        await fill(gw, "q-ietf", 28 * MiB)
        async with gw.http.post(gw.files(), data=os.urandom(3 * MiB), headers={
                **auth("q-ietf"), "Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1"}) as response:
            # The length is the body's: known at creation, refused at creation, nothing kept.
            assert response.status == 403
        count = await db.fetchval("select count(*) from uploads where owner_sub = 'q-ietf' and state = 'active'")
        assert count == 1


async def test_concurrent_declarations_cannot_overshoot(stack, db) -> None:  # type: ignore[no-untyped-def]
    async with running(quota_settings(stack)) as gw:
        deferred = [await gw.create(None, subject="q-race") for _ in range(6)]

        async def declare(location: str) -> int:
            async with gw.http.post(f"{location}/parts", json={"parts": [], "length": 10 * MiB},
                                    headers=auth("q-race")) as response:
                return response.status

        statuses = await asyncio.gather(*(declare(location) for location in deferred))
        assert sorted(statuses) == [200, 200, 200, 403, 403, 403]
        declared = await db.fetchval(
            "select coalesce(sum(length), 0) from uploads where owner_sub = 'q-race' and state = 'active'")
        assert declared == QUOTA


async def test_companion_uploads_cannot_sign_past_the_quota(stack) -> None:  # type: ignore[no-untyped-def]
    async with running(quota_settings(stack)) as gw:
        await fill(gw, "q-uppy", 20 * MiB)
        async with gw.http.post(f"{gw.url}/s3/multipart", json={"filename": "a.bin", "type": "application/pdf"},
                                headers=auth("q-uppy")) as response:
            assert response.status == 200
            created = await response.json()
        query = {"key": created["key"]}
        base = f"{gw.url}/s3/multipart/{created['uploadId']}"
        # Uppy's parts are 5 MiB: parts 1 and 2 fit the 10 MiB left; part 3 would start past them.
        async with gw.http.get(f"{base}/batch", params={**query, "partNumbers": "1,2"},
                               headers=auth("q-uppy")) as response:
            assert response.status == 200
        async with gw.http.get(f"{base}/3", params=query, headers=auth("q-uppy")) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "quota_exceeded"


async def test_concurrent_creations_of_one_owner_take_exactly_the_quota(stack, db) -> None:  # type: ignore[no-untyped-def]
    """One token at many connections (a load tester): 24 creations race for 10 slots of the counter row."""
    settings = make_settings(stack, max_active_uploads_per_owner=10, max_active_bytes_per_owner=QUOTA)
    async with running(settings) as gw:
        async def create() -> int:
            async with gw.http.post(gw.files(), headers={**auth("q-many"), "Tus-Resumable": "1.0.0",
                                                          "Upload-Length": str(MiB)}) as response:
                return response.status

        statuses = await asyncio.gather(*(create() for _ in range(24)))
        assert sorted(statuses) == [201] * 10 + [403] * 14
        assert await db.fetchval(
            "select count(*) from uploads where owner_sub = 'q-many' and state = 'active'") == 10
        usage = await db.fetchrow("select active_uploads, active_bytes from owner_usage where owner_sub = 'q-many'")
        assert (usage["active_uploads"], usage["active_bytes"]) == (10, 10 * MiB)
        # A deleted upload gives its slot back.
        done = await db.fetchval("select id from uploads where owner_sub = 'q-many' and state = 'active' limit 1")
        async with gw.http.delete(gw.files(f"/{done}"), headers={**auth("q-many"), "Tus-Resumable": "1.0.0"}) as r:
            assert r.status == 204
        assert await create() == 201
