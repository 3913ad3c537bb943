"""Exactly-once completion: what a request left `completing` is finished by the worker, never falsely."""

from __future__ import annotations

from gateway.core.errors import ErrorCode
from gateway.core.model import MiB, State, Upload
from tests.support.memory import ALICE, World, error_of, payload

PART = 5 * MiB


async def left_completing(world: World, data: bytes) -> Upload:
    """An upload whose last confirm moved it to `completing` while CompleteMultipartUpload failed."""
    upload = await world.create(len(data), part_size=PART)
    numbers = list(range(1, (upload.part_count or 0) + 1))
    await world.put_parts(upload, data, numbers)
    world.store.fail("complete", times=1)
    confirmed = await world.uploads.confirm(upload.id, ALICE, numbers)
    assert (confirmed.state, confirmed.offset) == (State.COMPLETING, len(data))
    return upload


async def run_worker(world: World) -> int:
    world.clock.advance(world.completion_worker.stale_after + 1)
    return await world.completion_worker.run_once()


async def state_of(world: World, upload: Upload) -> State:
    stored = await world.repo.get(upload.id)
    assert stored is not None
    return stored.state


async def test_worker_finishes_what_a_request_left(world: World) -> None:
    data = payload(PART + 100)
    upload = await left_completing(world, data)
    assert await world.completion_worker.run_once() == 0  # not stale yet: the request may still finish it
    assert await run_worker(world) == 1
    assert await state_of(world, upload) is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data
    assert world.repo.events.count(("completed", upload.id)) == 1


async def test_worker_leases_what_it_claims(world: World) -> None:
    upload = await left_completing(world, payload(PART + 1))
    world.store.fail("complete")  # S3 stays down
    assert await run_worker(world) == 1
    assert await world.completion_worker.run_once() == 0  # leased for another stale_after
    assert await run_worker(world) == 1
    world.store.heal()
    assert await run_worker(world) == 1
    assert await state_of(world, upload) is State.COMPLETED


async def test_no_such_upload_after_a_successful_complete_is_success(world: World) -> None:
    data = payload(PART + 100)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1, 2])
    world.store.lose_complete_responses = 1  # S3 assembled the object; its answer was lost
    assert (await world.uploads.confirm(upload.id, ALICE, [1, 2])).state is State.COMPLETING
    assert await run_worker(world) == 1
    assert world.store.calls["head_object"] == 1
    assert await state_of(world, upload) is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data


async def test_vanished_multipart_upload_fails_the_upload(world: World) -> None:
    upload = await left_completing(world, payload(PART + 1))
    await world.store.abort(upload.key, upload.multipart_id or "")
    await run_worker(world)
    assert await state_of(world, upload) is State.FAILED
    assert upload.key not in world.store.objects
    assert ("failed", upload.id) in world.repo.events


async def test_an_object_of_another_upload_is_not_mistaken_for_success(world: World) -> None:
    upload = await left_completing(world, payload(PART + 1))
    await world.store.abort(upload.key, upload.multipart_id or "")
    # Something else sits at the key (not this upload's object): Complete did not happen.
    await world.store.put_empty(upload.key, content_type="x", metadata={"upload-id": "someone-else"})
    await run_worker(world)
    assert await state_of(world, upload) is State.FAILED


async def test_stale_etag_is_refreshed_at_complete(world: World) -> None:
    data = payload(PART + 100)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1, 2])
    await world.uploads.confirm(upload.id, ALICE, [1])
    newer = payload(PART, seed=7)
    # Part 1 is PUT again with other bytes of the same size after it was confirmed (a client retry).
    await world.store.upload_part(upload.key, upload.multipart_id or "", 1, PART, _once(newer))
    await world.uploads.confirm(upload.id, ALICE, [2])
    assert await state_of(world, upload) is State.COMPLETED
    assert world.store.object_bytes(upload.key) == newer + data[PART:]


async def test_invalid_part_reopens_the_upload(world: World) -> None:
    data = payload(PART + 100)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1, 2])
    await world.uploads.confirm(upload.id, ALICE, [1])
    # S3 now holds a part 1 of the wrong size: Complete refuses it and the part must be uploaded again.
    await world.store.upload_part(upload.key, upload.multipart_id or "", 1, MiB, _once(payload(MiB)))
    await world.uploads.confirm(upload.id, ALICE, [2])
    reopened = await world.uploads.status(upload.id, ALICE)
    assert (reopened.state, reopened.offset, reopened.confirmed_beyond_prefix) == (State.ACTIVE, 0, (2,))
    await world.put_parts(reopened, data, [1])
    await world.uploads.confirm(upload.id, ALICE, [1])
    assert await state_of(world, upload) is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data


async def test_s3_style_complete_takes_the_length_from_the_parts(world: World) -> None:
    data = payload(PART + 100)
    upload = await world.create(None, part_size=PART)
    await world.put_parts(upload, data[:PART], [1])
    await world.store.upload_part(upload.key, upload.multipart_id or "", 2, 100, _once(data[PART:]))
    assert (await world.uploads.complete_listed(upload.id, ALICE, [1, 2])).offset == len(data)
    assert await state_of(world, upload) is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data


async def test_s3_style_complete_with_a_gap_is_refused(world: World) -> None:
    upload = await world.create(None, part_size=PART)
    error = await error_of(world.uploads.complete_listed(upload.id, ALICE, [1, 3]))
    assert error.code is ErrorCode.INVALID_REQUEST


async def _once(data: bytes):  # type: ignore[no-untyped-def]
    yield data


async def test_s3_style_complete_of_too_few_parts(world: World) -> None:
    data = payload(PART + 100)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])
    error = await error_of(world.uploads.complete_listed(upload.id, ALICE, [1]))
    assert error.code is ErrorCode.LENGTH_CONFLICT


async def test_s3_style_complete_of_parts_s3_refuses(world: World) -> None:
    data = payload(PART + 100)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1, 2])
    real_complete = world.store.complete

    async def complete_after_part_1_shrank(*args, **kwargs):  # type: ignore[no-untyped-def]
        # Part 1 is replaced by a smaller one just before Complete (another client's PUT).
        await world.store.upload_part(upload.key, upload.multipart_id or "", 1, MiB, _once(payload(MiB)))
        world.store.complete = real_complete  # type: ignore[method-assign]
        return await real_complete(*args, **kwargs)

    world.store.complete = complete_after_part_1_shrank  # type: ignore[method-assign]
    error = await error_of(world.uploads.complete_listed(upload.id, ALICE, [1, 2]))
    assert error.code is ErrorCode.PART_NOT_VISIBLE and error.details == {"parts": [1]}
    assert (await state_of(world, upload)) is State.ACTIVE
