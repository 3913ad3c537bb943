"""Finding parts in paginated ListParts answers."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.core.listing import find_parts, list_all, list_from
from gateway.core.model import MiB, Owner, State, Upload
from tests.support.memory import ALICE, MemoryObjectStore, build_world, payload


async def tiny_parts(count: int) -> tuple[MemoryObjectStore, Upload]:
    """A multipart upload of `count` one-byte parts (sizes are only checked at Complete)."""
    store = MemoryObjectStore()
    multipart_id = await store.create_multipart("k", content_type="x", metadata={}, checksum=None)
    for number in range(1, count + 1):
        await store.upload_part("k", multipart_id, number, 1, _once(bytes([number % 256])))
    upload = Upload(id="00x", owner=Owner("i", "s"), length=count, part_size=1, part_checksum=None, metadata={},
                    bucket="b", key="k", multipart_id=multipart_id, state=State.ACTIVE, prefix_parts=0,
                    expires_at=datetime.now(UTC), is_expired=False)
    return store, upload


async def test_pages_are_followed_to_the_wanted_parts() -> None:
    store, upload = await tiny_parts(2500)
    found = await list_from(store, upload, [5, 1200, 2499])
    assert sorted(found) == [5, 1200, 2499]
    assert found[1200].etag == (await store.list_parts("k", upload.multipart_id or "", 1199, 1)).parts[0].etag
    assert store.calls["list_parts"] <= 5


async def test_a_part_listed_late_is_found_by_the_retries() -> None:
    store, upload = await tiny_parts(3)
    store.hide_new_parts = 3
    await store.upload_part("k", upload.multipart_id or "", 3, 1, _once(b"z"))  # listed only on the 4th call
    assert sorted(await find_parts(store, upload, [2, 3])) == [2, 3]


async def _once(data: bytes):  # type: ignore[no-untyped-def]
    yield data


async def test_list_all_walks_every_page_in_number_order() -> None:
    store, upload = await tiny_parts(2500)
    listed = await list_all(store, upload)
    assert [p.number for p in listed] == list(range(1, 2501))
    assert store.calls["list_parts"] == 3


async def test_held_parts_are_what_s3_holds_unconfirmed_and_short_included() -> None:
    """Companion's listing: a part PUT a moment ago and a short last part show at once, nothing recorded."""
    world = build_world()
    data = payload(2 * 5 * MiB + 7)
    upload = await world.create(len(data), part_size=5 * MiB)
    await world.put_parts(upload, data, [1, 3])
    assert [(p.number, p.size) for p in await world.uploads.held_parts(upload.id, ALICE)] == [(1, 5 * MiB), (3, 7)]
    row = await world.repo.get(upload.id)
    assert row is not None and row.offset == 0
    await world.put_parts(upload, data, [2])
    assert [p.number for p in await world.uploads.held_parts(upload.id, ALICE)] == [1, 2, 3]
    # Finished: no multipart upload any more; the confirmed parts are what it holds.
    await world.uploads.confirm(upload.id, ALICE, [1, 2, 3])
    assert [(p.number, p.size) for p in await world.uploads.held_parts(upload.id, ALICE)] == [
        (1, 5 * MiB), (2, 5 * MiB), (3, 7)]
