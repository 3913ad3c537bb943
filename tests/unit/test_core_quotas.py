"""Per-owner quotas of active uploads and declared bytes: a refused creation leaves nothing in S3."""

from __future__ import annotations

from gateway.core.errors import ErrorCode
from gateway.core.model import MiB, State
from gateway.core.ports import Quota
from tests.support.memory import ALICE, BOB, build_world, error_of, payload


async def test_max_uploads_per_owner() -> None:
    world = build_world(quota=Quota(max_uploads=2, max_bytes=100 * MiB))
    first = await world.create(MiB)
    await world.create(None)  # a deferred upload counts as an upload
    error = await error_of(world.create(MiB))
    assert error.code is ErrorCode.QUOTA_EXCEEDED
    assert len(world.store.multipart) == 2  # the refused upload's multipart upload was aborted
    assert len(world.repo.rows) == 2
    assert await world.create(MiB, BOB)  # quotas are per owner
    await world.uploads.terminate(first.id, ALICE)  # ended uploads stop counting
    assert await world.create(MiB)


async def test_max_declared_bytes_per_owner() -> None:
    world = build_world(quota=Quota(max_uploads=10, max_bytes=20 * MiB))
    await world.create(15 * MiB)
    assert (await error_of(world.create(6 * MiB))).code is ErrorCode.QUOTA_EXCEEDED
    assert len(world.store.multipart) == 1
    assert await world.create(5 * MiB)  # exactly at the limit


async def test_completed_uploads_do_not_count() -> None:
    world = build_world(quota=Quota(max_uploads=1, max_bytes=100 * MiB))
    await world.upload_direct(payload(MiB))
    assert await world.create(MiB)


async def test_an_empty_upload_is_finished_at_once_and_takes_no_slot() -> None:
    """Only active uploads count (as a completed one does not): an empty file at the quota is created."""
    world = build_world(quota=Quota(max_uploads=1, max_bytes=100 * MiB))
    await world.create(MiB)
    empty = await world.create(0)
    assert empty.state is State.COMPLETED and len(world.store.objects) == 1
    assert (await error_of(world.create(MiB))).code is ErrorCode.QUOTA_EXCEEDED


async def test_a_later_length_declaration_obeys_the_bytes_quota() -> None:
    world = build_world(quota=Quota(max_uploads=10, max_bytes=20 * MiB))
    await world.create(15 * MiB)
    deferred = await world.create(None, part_size=5 * MiB)
    error = await error_of(world.uploads.sign(deferred.id, ALICE, [], 10 * MiB))
    assert error.code is ErrorCode.QUOTA_EXCEEDED
