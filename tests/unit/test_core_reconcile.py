"""Reconcile on HEAD/status: parts signed and PUT whose confirm was lost are found; status never fails on S3."""

from __future__ import annotations

import asyncio
import time

from gateway.core.model import MiB, State
from gateway.core.uploads import PartRequest
from tests.support.memory import ALICE, World, build_world, payload

PART = 5 * MiB


async def test_status_records_parts_whose_confirm_was_lost(world: World) -> None:
    data = payload(2 * PART + 10)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1, 2])  # PUT to S3; the confirms never arrived
    status = await world.uploads.status(upload.id, ALICE)
    assert (status.state, status.offset) == (State.ACTIVE, 2 * PART)
    assert [p.number for p in await world.repo.confirmed_parts(upload.id)] == [1, 2]


async def test_reconcile_is_throttled_per_upload(world: World) -> None:
    data = payload(PART + 10)
    upload = await world.create(len(data), part_size=PART)
    signed = await world.uploads.sign(upload.id, ALICE, [PartRequest(1), PartRequest(2)], None)
    await world.store.put_presigned(signed.parts[0].url, data[:PART])
    assert (await world.uploads.status(upload.id, ALICE)).offset == PART
    await world.store.put_presigned(signed.parts[1].url, data[PART:])
    calls = world.store.calls["list_parts"]
    assert (await world.uploads.status(upload.id, ALICE)).offset == PART  # no S3 call within the interval
    assert world.store.calls["list_parts"] == calls
    world.clock.advance(world.limits.reconcile_interval + 1)
    await world.uploads.status(upload.id, ALICE)
    assert (await world.uploads.status(upload.id, ALICE)).state is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data


async def test_only_signed_parts_of_the_planned_size_are_recorded(world: World) -> None:
    upload = await world.create(3 * PART, part_size=PART)
    signed = await world.uploads.sign(upload.id, ALICE, [PartRequest(1)], None, pin_length=False)
    await world.store.put_presigned(signed.parts[0].url, payload(PART - 1))  # wrong size
    # Part 2 is in S3 but was never signed (e.g. a stale proxy write): reconcile does not look at it.
    await world.store.upload_part(upload.key, upload.multipart_id or "", 2, PART, _once(payload(PART)))
    status = await world.uploads.status(upload.id, ALICE)
    assert (status.offset, status.confirmed_beyond_prefix) == (0, ())


async def test_no_s3_call_when_nothing_is_due(world: World) -> None:
    upload = await world.create(2 * PART, part_size=PART)
    await world.uploads.status(upload.id, ALICE)
    assert world.store.calls.get("list_parts", 0) == 0


async def test_status_never_fails_because_of_s3(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])
    world.store.fail("list_parts")
    status = await world.uploads.status(upload.id, ALICE)
    assert (status.state, status.offset) == (State.ACTIVE, 0)


async def test_status_does_not_wait_for_a_hanging_s3() -> None:
    world = build_world(head_reconcile_timeout=0.05)
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])

    async def hang(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    world.store.list_parts = hang  # type: ignore[method-assign,assignment]
    started = time.monotonic()
    assert (await world.uploads.status(upload.id, ALICE)).offset == 0
    assert time.monotonic() - started < 1


async def test_vanished_multipart_is_left_to_the_sweeper(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])
    await world.store.abort(upload.key, upload.multipart_id or "")
    assert (await world.uploads.status(upload.id, ALICE)).state is State.ACTIVE


async def _once(data: bytes):  # type: ignore[no-untyped-def]
    yield data
