"""The sweeper: expired uploads released, S3 multipart uploads without a live row aborted."""

from __future__ import annotations

from datetime import timedelta

from gateway.core.errors import ErrorCode
from gateway.core.model import MiB, State
from tests.support.memory import ALICE, BytesBody, World, build_world, error_of, payload

PART = 5 * MiB


async def test_expired_uploads_release_their_s3_state(world: World) -> None:
    upload = await world.create(2 * PART, part_size=PART)
    stashed = await world.proxy.patch(upload.id, ALICE, 0, BytesBody(payload(MiB)))
    assert stashed.stash
    await world.create(2 * PART, part_size=PART)  # a second one, never touched
    world.clock.advance(world.limits.upload_ttl + 1)
    report = await world.sweeper.run_once()
    assert report.expired == 2
    assert world.store.multipart == {} and world.store.objects == {}
    stored = await world.repo.get(upload.id)
    assert stored is not None and (stored.state, stored.stash) == (State.EXPIRED, ())
    assert (await world.sweeper.run_once()).expired == 0


async def test_orphan_multipart_uploads_are_aborted_after_the_grace() -> None:
    world = build_world(orphan_grace=60)
    live = await world.create(2 * PART, part_size=PART)
    # A crash between CreateMultipartUpload and the INSERT: S3 holds an upload no row knows.
    orphan = await world.store.create_multipart("t/xx/orphan", content_type="x", metadata={}, checksum=None)
    young = await world.store.create_multipart("t/xx/young", content_type="x", metadata={}, checksum=None)
    elsewhere = await world.store.create_multipart("other/orphan", content_type="x", metadata={}, checksum=None)
    for multipart_id in (orphan, elsewhere, live.multipart_id or ""):
        world.store.multipart[multipart_id].initiated -= timedelta(hours=1)
    report = await world.sweeper.run_once()
    assert report.orphans_aborted == 1
    assert set(world.store.multipart) == {live.multipart_id, young, elsewhere}


async def test_tombstones_are_purged_after_their_retention(world: World) -> None:
    upload = await world.create(MiB)
    await world.uploads.terminate(upload.id, ALICE)
    await world.sweeper.run_once()
    assert upload.id in world.repo.rows
    world.clock.advance(timedelta(days=8).total_seconds())
    assert (await world.sweeper.run_once()).tombstones_purged == 1
    assert upload.id not in world.repo.rows


async def test_a_failed_insert_leaves_an_orphan_the_sweeper_aborts() -> None:
    world = build_world(orphan_grace=60)
    world.repo.unavailable = True
    error = await error_of(world.create(2 * PART, part_size=PART))
    assert error.code is ErrorCode.DATABASE_UNAVAILABLE
    world.repo.unavailable = False
    (orphan,) = world.store.multipart.values()  # S3 first: the INSERT never happened
    orphan.initiated -= timedelta(hours=1)
    assert (await world.sweeper.run_once()).orphans_aborted == 1
    assert world.store.multipart == {}
