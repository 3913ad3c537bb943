"""Refusals that must not change state, and concatenation bounds: a chunked body past the end never
completes the upload, a refused IETF creation leaves no orphan, one small request cannot make the
gateway stream or S3 copy without bound."""

from __future__ import annotations

import os

from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, running, upload_id
from tests.support.tokens import TUS, auth

PART = 5 * MiB
OCTETS = {"Content-Type": "application/offset+octet-stream"}


async def chunks(data: bytes, size: int = 256 * 1024):  # type: ignore[no-untyped-def]
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_a_chunked_patch_past_the_length_does_not_complete_the_upload(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(PART + 100, **{"Upload-Part-Size": str(PART)})
    body = os.urandom(PART + 100 + 5000)  # runs 5000 bytes past Upload-Length, without a Content-Length
    async with gateway.http.patch(location, data=chunks(body), headers={
            **auth(), **OCTETS, "Upload-Offset": "0"}) as response:
        assert response.status == 413, await response.text()
    row = await upload_row(db, upload_id(location))
    # The whole first part is kept (the offset says so); the upload is not completed with wrong bytes.
    assert row["state"] == "active"
    async with gateway.http.head(location, headers=auth()) as response:
        assert int(response.headers["Upload-Offset"]) < PART + 100


async def test_a_refused_ietf_creation_leaves_no_active_upload(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    before = await db.fetchval("select count(*) from uploads where owner_sub = 'ietf-refused' and state = 'active'")
    async with gateway.http.post(gateway.files(), data=os.urandom(200), headers={
            **auth("ietf-refused"), "Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0",
            "Upload-Length": "100"}) as response:
        assert response.status == 413
    after = await db.fetchval("select count(*) from uploads where owner_sub = 'ietf-refused' and state = 'active'")
    assert after == before


async def partial(gw: Gateway, size: int, subject: str = "concat-bound") -> str:
    location = await gw.create(size, subject=subject, **{"Upload-Concat": "partial"})
    async with gw.http.patch(location, data=os.urandom(size), headers={
            **auth(subject), **OCTETS, "Upload-Offset": "0"}) as response:
        assert response.status == 204
    return location


async def final(gw: Gateway, partials: list[str], subject: str = "concat-bound") -> int:
    async with gw.http.post(gw.files(), headers={**auth(subject), **TUS,
                                                 "Upload-Concat": "final;" + " ".join(partials)}) as response:
        return response.status


async def test_one_partial_listed_200_times_is_refused(stack, db) -> None:  # type: ignore[no-untyped-def]
    async with running(make_settings(stack)) as gw:
        small = await partial(gw, 64 * 1024)
        finals = "select count(*) from uploads where owner_sub = 'concat-bound' and concat = 'final'"
        before = await db.fetchval(finals)
        assert await final(gw, [small] * 200) == 400
        assert await db.fetchval(finals) == before


async def test_bytes_streamed_through_the_gateway_per_final_are_bounded(stack) -> None:  # type: ignore[no-untyped-def]
    async with running(make_settings(stack, concat_max_streamed=1 * MiB)) as gw:
        small = await partial(gw, 64 * 1024)
        assert await final(gw, [small] * 20) == 400  # 1.25 MiB would stream through
        assert await final(gw, [small] * 10) == 201


async def test_a_final_counts_against_the_byte_quota(stack) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(stack, max_active_bytes_per_owner=25 * MiB)
    async with running(settings) as gw:
        big = await partial(gw, 10 * MiB, subject="concat-quota")
        assert await final(gw, [big, big, big], subject="concat-quota") == 403
        assert await final(gw, [big, big], subject="concat-quota") == 201
