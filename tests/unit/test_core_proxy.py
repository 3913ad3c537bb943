"""The proxy path (tus PATCH): bodies streamed into fixed parts and stash segments, one fenced writer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import pytest

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import MiB, State, Upload, proxy_part_size
from gateway.core.ports import BodyInterrupted
from gateway.core.proxy import STASH_COMPACT_AFTER, ExpectedChecksum
from gateway.core.uploads import PartRequest
from tests.support.memory import ALICE, BOB, BytesBody, World, build_world, error_of, payload

PART = 5 * MiB


class StallingBody(BytesBody):
    """Hands out `stall_at` bytes, then waits for `release` (a client that stopped sending)."""

    def __init__(self, data: bytes, stall_at: int) -> None:
        super().__init__(data)
        self.stall_at = stall_at
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def read(self, limit: int) -> bytes:
        if self.position >= self.stall_at and not self.release.is_set():
            self.stalled.set()
            waits = [asyncio.ensure_future(self.release.wait()), asyncio.ensure_future(self.aborted.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        if self.aborted.is_set():
            raise BodyInterrupted("aborted")
        end = self.stall_at if not self.release.is_set() else len(self.data)
        piece = self.data[self.position:min(end, self.position + limit)]
        self.position += len(piece)
        await asyncio.sleep(0)
        return piece


def stash_objects(world: World, upload: Upload) -> list[str]:
    return [key for key in world.store.objects if f"/stash/{upload.id}/" in key]


async def patch(world: World, upload: Upload, offset: int, data: bytes, **kwargs: object) -> Upload:
    return await world.proxy.patch(upload.id, ALICE, offset, BytesBody(data), **kwargs)  # type: ignore[arg-type]


async def test_patches_fill_parts_and_stash_then_complete(world: World) -> None:
    data = payload(2 * PART + 2 * MiB)
    upload = await world.create(len(data), part_size=PART)
    first = await patch(world, upload, 0, data[:7 * MiB])
    # Part 1 is whole; the 2 MiB after it wait in a stash segment and count in the offset.
    assert (first.offset, first.prefix_parts, [s.size for s in first.stash]) == (7 * MiB, 1, [2 * MiB])
    assert sorted(world.store.multipart[upload.multipart_id or ""].parts) == [1]
    assert len(stash_objects(world, upload)) == 1
    done = await patch(world, upload, 7 * MiB, data[7 * MiB:])
    assert (done.offset, done.state) == (len(data), State.COMPLETING)
    assert (await world.uploads.status(upload.id, ALICE)).state is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data
    assert stash_objects(world, upload) == []  # superseded segments are deleted


async def test_any_chunk_size_makes_progress(world: World) -> None:
    data = payload(PART + 1 * MiB)
    upload = await world.create(len(data), part_size=PART)
    offset = 0
    for size in (700 * 1024, 1, 3 * MiB, 2 * MiB):
        offset = (await patch(world, upload, offset, data[offset:offset + size])).offset
    offset = (await patch(world, upload, offset, data[offset:])).offset
    assert offset == len(data)
    assert world.store.object_bytes(upload.key) == data


async def test_offset_mismatch_reads_nothing(world: World) -> None:
    upload = await world.create(2 * PART, part_size=PART)
    body = BytesBody(payload(MiB))
    error = await error_of(world.proxy.patch(upload.id, ALICE, 1, body))
    assert error.code is ErrorCode.OFFSET_MISMATCH and error.details == {"offset": 0}
    assert body.position == 0


async def test_body_past_the_end_is_refused_before_writing(world: World) -> None:
    upload = await world.create(PART, part_size=PART)
    error = await error_of(patch(world, upload, 0, payload(PART + 1)))
    assert error.code is ErrorCode.MAX_SIZE_EXCEEDED
    assert world.store.multipart[upload.multipart_id or ""].parts == {}


async def test_newer_patch_stops_a_stalled_one_which_keeps_what_it_received(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    stalled_body = StallingBody(data[:PART], stall_at=1000)
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body))
    await stalled_body.stalled.wait()
    # The client reconnected and PATCHes from the offset it last knew: the running PATCH is stopped and
    # saves its 1000 bytes first, so the new one is told the real offset.
    error = await error_of(patch(world, upload, 0, data[:PART]))
    assert error.code is ErrorCode.OFFSET_MISMATCH and error.details == {"offset": 1000}
    assert (await stalled).offset == 1000
    assert (await patch(world, upload, 1000, data[1000:])).offset == len(data)
    assert world.store.object_bytes(upload.key) == data
    assert stash_objects(world, upload) == []


async def test_preempted_stash_is_not_kept(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    stalled_body = StallingBody(data[:2 * MiB], stall_at=1000)
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body))
    await stalled_body.stalled.wait()
    # Another instance's PATCH takes over (this process cannot stop the stalled one for it).
    claimed = await world.repo.claim_writer(upload.id, 0, 60)
    assert claimed is not None
    stalled_body.release.set()
    assert (await error_of(stalled)).code is ErrorCode.WRITER_PREEMPTED
    current = await world.uploads.status(upload.id, ALICE)
    assert (current.offset, current.stash) == (0, ())
    assert stash_objects(world, upload) == []  # the stale segment was deleted


async def test_a_claim_by_another_instance_fences_the_running_patch(world: World) -> None:
    upload = await world.create(2 * PART, part_size=PART)
    stalled_body = StallingBody(payload(PART), stall_at=1000)
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body))
    await stalled_body.stalled.wait()
    assert await world.repo.claim_writer(upload.id, 0, 60) is not None  # another instance's PATCH starts
    stalled_body.release.set()
    assert (await error_of(stalled)).code is ErrorCode.WRITER_PREEMPTED
    assert (await world.uploads.status(upload.id, ALICE)).offset == 0


async def test_a_patch_at_a_stale_offset_is_a_mismatch(world: World) -> None:
    upload = await world.create(2 * PART, part_size=PART)
    await patch(world, upload, 0, payload(MiB))
    error = await error_of(patch(world, upload, 0, payload(MiB)))
    assert error.code is ErrorCode.OFFSET_MISMATCH and error.details == {"offset": MiB}


@pytest.mark.parametrize("cut", [1, MiB + 3, PART, PART + 1, PART + 2 * MiB, 2 * PART - 1])
async def test_a_dropped_body_keeps_every_byte_received(world: World, cut: int) -> None:
    """Inside a part, at a boundary, just after one: the offset is where the body broke."""
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    kept = await world.proxy.patch(upload.id, ALICE, 0, BytesBody(data, interrupt_after=cut))
    assert kept.offset == cut
    assert (kept.prefix_parts, kept.stash_bytes) == divmod(cut, PART)
    assert (await world.proxy.patch(upload.id, ALICE, cut, BytesBody(data[cut:]))).offset == len(data)
    assert world.store.object_bytes(upload.key) == data
    assert stash_objects(world, upload) == []


async def test_a_part_bigger_than_the_buffer_is_saved_a_buffer_at_a_time(world: World) -> None:
    world = build_world(proxy_buffer=MiB)
    data = payload(2 * PART + 123)
    upload = await world.create(len(data), part_size=PART)
    cut = PART + 3 * MiB + 1000
    puts: list[int] = []
    put_object = world.store.put_object

    async def recording_put(key: str, size: int, body):  # type: ignore[no-untyped-def]
        puts.append(size)
        await put_object(key, size, body)

    world.store.put_object = recording_put  # type: ignore[method-assign]
    kept = await world.proxy.patch(upload.id, ALICE, 0, BytesBody(data, interrupt_after=cut))
    assert kept.offset == cut
    # Part 1 streamed whole (its segments superseded and deleted); part 2 kept in buffer-sized segments.
    assert max(puts) <= MiB and [s.size for s in kept.stash] == [MiB, MiB, MiB, 1000]
    assert len(stash_objects(world, upload)) == 4
    done = await world.proxy.patch(upload.id, ALICE, cut, BytesBody(data[cut:]))
    assert done.offset == len(data)
    assert world.store.object_bytes(upload.key) == data
    assert stash_objects(world, upload) == []


async def test_a_cut_chunked_body_keeps_what_it_sent(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    cut = PART + MiB + 77
    kept = await world.proxy.patch(upload.id, ALICE, 0, BytesBody(data, sized=False, interrupt_after=cut,
                                                                  chunk=70_000))
    assert kept.offset == cut
    rest = BytesBody(data[cut:], sized=False, chunk=70_000)
    assert (await world.proxy.patch(upload.id, ALICE, cut, rest)).offset == len(data)
    assert world.store.object_bytes(upload.key) == data


async def test_a_cut_checksummed_body_keeps_nothing_new(world: World) -> None:
    data = payload(3 * PART)
    upload = await world.create(len(data), part_size=PART)
    await patch(world, upload, 0, data[:MiB])
    body = data[MiB:]
    checksum = ExpectedChecksum("sha256", hashlib.sha256(body).digest())
    after = await world.proxy.patch(upload.id, ALICE, MiB, BytesBody(body, interrupt_after=PART + 2 * MiB),
                                    checksum=checksum)
    assert (after.offset, after.prefix_parts) == (MiB, 0)  # the earlier stash stays, nothing new counts
    assert len(stash_objects(world, upload)) == 1
    assert (await patch(world, upload, MiB, body, checksum=checksum)).offset == len(data)
    assert world.store.object_bytes(upload.key) == data


async def test_a_head_stops_a_silent_patch_and_sees_what_it_saved(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    stalled_body = StallingBody(data, stall_at=PART + 300_000)
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body))
    await stalled_body.stalled.wait()
    assert not await world.proxy.release(upload.id, BOB)  # another owner's request does nothing
    assert (await world.uploads.status(upload.id, ALICE)).offset == PART
    # The body has been silent: the HEAD stops the PATCH, which saves the 300,000 bytes it holds.
    assert await world.proxy.release(upload.id, ALICE, idle_for=0.01)
    assert (await world.uploads.status(upload.id, ALICE)).offset == PART + 300_000
    assert (await stalled).offset == PART + 300_000
    assert world.proxy.writers == {}


class TricklingBody(BytesBody):
    """A live client: 64 KiB every 10 ms, never silent."""

    async def read(self, limit: int) -> bytes:
        await asyncio.sleep(0.01)
        return await super().read(min(limit, 64 * 1024))


async def test_a_head_lets_a_live_patch_read_on_then_stops_it(world: World) -> None:
    data = payload(PART)
    upload = await world.create(len(data), part_size=PART)
    body = TricklingBody(data)
    running = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, body))
    await asyncio.sleep(0.05)
    # Bytes keep coming: the PATCH reads on for `live_for`, then stops and saves everything it read.
    assert await world.proxy.release(upload.id, ALICE, idle_for=60, live_for=0.2)
    kept = await running
    assert kept.offset == body.position > 64 * 1024
    assert (await world.uploads.status(upload.id, ALICE)).offset == kept.offset


async def test_a_cancelled_patch_saves_what_it_holds(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    stalled_body = StallingBody(data, stall_at=PART + 123_456)
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body))
    await stalled_body.stalled.wait()
    stalled.cancel()  # aiohttp's handler cancellation, or the shutdown timeout
    with contextlib.suppress(asyncio.CancelledError):
        await stalled
    assert (await world.uploads.status(upload.id, ALICE)).offset == PART + 123_456
    await patch(world, upload, PART + 123_456, data[PART + 123_456:])
    assert world.store.object_bytes(upload.key) == data


async def test_a_cancelled_checksummed_patch_keeps_nothing(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    stalled_body = StallingBody(data, stall_at=3 * MiB)
    checksum = ExpectedChecksum("md5", hashlib.md5(data).digest())
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body, checksum=checksum))
    await stalled_body.stalled.wait()
    stalled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stalled
    assert (await world.uploads.status(upload.id, ALICE)).offset == 0


async def test_chunked_body_without_length(world: World) -> None:
    data = payload(2 * PART + 3 * MiB)
    upload = await world.create(len(data), part_size=PART)
    first = await world.proxy.patch(upload.id, ALICE, 0, BytesBody(data[:PART + MiB], sized=False, chunk=70_000))
    assert (first.offset, first.prefix_parts) == (PART + MiB, 1)
    rest = BytesBody(data[PART + MiB:], sized=False, chunk=70_000)
    assert (await world.proxy.patch(upload.id, ALICE, first.offset, rest)).offset == len(data)
    assert world.store.object_bytes(upload.key) == data


async def test_checksum_mismatch_discards_the_body(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    body = data[:7 * MiB]
    wrong = ExpectedChecksum("sha1", hashlib.sha1(b"something else").digest())
    error = await error_of(patch(world, upload, 0, body, checksum=wrong))
    assert error.code is ErrorCode.CHECKSUM_MISMATCH
    after = await world.uploads.status(upload.id, ALICE)
    assert (after.offset, after.stash) == (0, ())
    assert stash_objects(world, upload) == []
    right = ExpectedChecksum("sha1", hashlib.sha1(body).digest())
    assert (await patch(world, upload, 0, body, checksum=right)).offset == 7 * MiB
    await patch(world, upload, 7 * MiB, data[7 * MiB:])
    assert world.store.object_bytes(upload.key) == data


async def test_deferred_length_stash_becomes_the_last_part(world: World) -> None:
    data = payload(PART + 2 * MiB)
    upload = await world.create(None, part_size=PART)
    partial = await patch(world, upload, 0, data)
    assert (partial.offset, partial.length) == (len(data), None)
    # An empty append that says "complete" (the IETF draft's Upload-Complete: ?1).
    done = await world.proxy.append(upload.id, ALICE, partial.offset, BytesBody(b""), complete=True)
    assert (done.length, done.offset) == (len(data), len(data))
    assert (await world.uploads.status(upload.id, ALICE)).state is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data


async def test_length_declared_on_the_last_patch(world: World) -> None:
    data = payload(PART + 100)
    upload = await world.create(None, part_size=PART)
    await patch(world, upload, 0, data[:PART])
    done = await patch(world, upload, PART, data[PART:], declared_length=len(data))
    assert done.offset == len(data)
    assert world.store.object_bytes(upload.key) == data
    # A retried final PATCH is answered without reading its body.
    again = await patch(world, upload, len(data), b"")
    assert again.offset == len(data)
    assert (await error_of(patch(world, upload, 0, data))).code is ErrorCode.OFFSET_MISMATCH


async def test_many_small_patches_are_compacted(world: World) -> None:
    data = payload(PART)
    upload = await world.create(len(data), part_size=PART)
    chunk = 64 * 1024
    offset = 0
    for _ in range(STASH_COMPACT_AFTER + 1):
        current = await patch(world, upload, offset, data[offset:offset + chunk])
        offset = current.offset
    assert offset == (STASH_COMPACT_AFTER + 1) * chunk
    stored = await world.uploads.status(upload.id, ALICE)
    assert (stored.offset, [s.size for s in stored.stash]) == (offset, [offset])  # merged into one segment
    assert len(stash_objects(world, upload)) == 1
    await patch(world, upload, offset, data[offset:])
    assert world.store.object_bytes(upload.key) == data


async def test_paths_do_not_mix(world: World) -> None:
    upload = await world.create(2 * PART, part_size=PART)
    await world.uploads.sign(upload.id, ALICE, [PartRequest(2)], None)
    assert (await error_of(patch(world, upload, 0, payload(MiB)))).code is ErrorCode.PATH_CONFLICT
    other = await world.create(2 * PART, part_size=PART)
    await patch(world, other, 0, payload(MiB))
    signing = await error_of(world.uploads.sign(other.id, ALICE, [PartRequest(1)], None))
    assert signing.code is ErrorCode.PATH_CONFLICT


async def test_terminate_fences_a_running_patch(world: World) -> None:
    data = payload(2 * MiB)
    upload = await world.create(2 * PART, part_size=PART)
    stalled_body = StallingBody(data, stall_at=1000)
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body))
    await stalled_body.stalled.wait()
    await world.uploads.terminate(upload.id, ALICE)
    stalled_body.release.set()
    assert (await error_of(stalled)).code is ErrorCode.WRITER_PREEMPTED
    assert stash_objects(world, upload) == []


async def test_checksummed_patch_continuing_a_stash(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    await patch(world, upload, 0, data[:2 * MiB])
    body = data[2 * MiB:6 * MiB]  # completes part 1 from the stash, leaves 1 MiB for part 2
    wrong = ExpectedChecksum("sha256", hashlib.sha256(body[::-1]).digest())
    assert (await error_of(patch(world, upload, 2 * MiB, body, checksum=wrong))).code is ErrorCode.CHECKSUM_MISMATCH
    unchanged = await world.uploads.status(upload.id, ALICE)
    assert (unchanged.offset, unchanged.prefix_parts) == (2 * MiB, 0)  # the earlier stash is kept
    right = ExpectedChecksum("sha256", hashlib.sha256(body).digest())
    moved = await patch(world, upload, 2 * MiB, body, checksum=right)
    assert (moved.offset, moved.prefix_parts, [s.size for s in moved.stash]) == (6 * MiB, 1, [MiB])
    assert len(stash_objects(world, upload)) == 1
    await patch(world, upload, 6 * MiB, data[6 * MiB:])
    assert world.store.object_bytes(upload.key) == data


async def test_interrupted_checksummed_patch_commits_nothing(world: World) -> None:
    data = payload(PART + MiB)
    upload = await world.create(len(data), part_size=PART)
    checksum = ExpectedChecksum("md5", hashlib.md5(data).digest())
    body = BytesBody(data, interrupt_after=PART + 1000)
    after = await world.proxy.patch(upload.id, ALICE, 0, body, checksum=checksum)
    assert after.offset == 0
    assert (await world.uploads.status(upload.id, ALICE)).offset == 0


async def test_append_with_upload_complete(world: World) -> None:
    """The IETF draft: the last append says where the upload ends."""
    data = payload(PART + 2 * MiB)
    upload = await world.create(None, part_size=PART)
    first = await world.proxy.append(upload.id, ALICE, 0, BytesBody(data[:3 * MiB]), complete=False)
    assert (first.offset, first.length) == (3 * MiB, None)
    done = await world.proxy.append(upload.id, ALICE, 3 * MiB, BytesBody(data[3 * MiB:]), complete=True)
    assert (done.length, done.offset) == (len(data), len(data))
    assert world.store.object_bytes(upload.key) == data
    late = await error_of(world.proxy.append(upload.id, ALICE, len(data), BytesBody(b"x"), complete=True))
    assert late.code is ErrorCode.INCONSISTENT_LENGTH
    empty = await error_of(world.proxy.append(upload.id, ALICE, len(data), BytesBody(b""), complete=True))
    assert empty.code is ErrorCode.COMPLETED_UPLOAD


async def test_chunked_append_with_upload_complete(world: World) -> None:
    data = payload(PART + 123)
    upload = await world.create(None, part_size=PART)
    done = await world.proxy.append(upload.id, ALICE, 0, BytesBody(data, sized=False), complete=True)
    assert (done.length, done.offset) == (len(data), len(data))
    assert world.store.object_bytes(upload.key) == data


async def test_append_must_end_at_the_announced_length(world: World) -> None:
    upload = await world.create(2 * MiB, part_size=PART)
    error = await error_of(world.proxy.append(upload.id, ALICE, 0, BytesBody(payload(MiB)), complete=True))
    assert error.code is ErrorCode.INCONSISTENT_LENGTH


async def test_interrupted_chunked_final_append_does_not_complete(world: World) -> None:
    data = payload(PART + 123)
    upload = await world.create(None, part_size=PART)
    body = BytesBody(data, sized=False, interrupt_after=PART + 50)
    with contextlib.suppress(UploadError):
        await world.proxy.append(upload.id, ALICE, 0, body, complete=True)
    stored = await world.repo.get(upload.id)
    assert stored is not None
    assert (stored.state, stored.length) == (State.ACTIVE, None)  # the client resumes from HEAD


async def test_a_save_inside_a_streaming_part_is_fenced_too(world: World) -> None:
    """A part bigger than the buffer saves segments while its UploadPart streams; once another instance
    took over, the next save is fenced and the PATCH ends as preempted, keeping nothing more."""
    world = build_world(proxy_buffer=MiB)
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    stalled_body = StallingBody(data, stall_at=2 * MiB + 1000)
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body))
    await stalled_body.stalled.wait()
    assert (await world.uploads.status(upload.id, ALICE)).offset == 2 * MiB  # two saved segments
    assert await world.repo.claim_writer(upload.id, 2 * MiB, 60) is not None
    stalled_body.release.set()
    assert (await error_of(stalled)).code is ErrorCode.WRITER_PREEMPTED
    after = await world.uploads.status(upload.id, ALICE)
    assert (after.offset, after.prefix_parts) == (2 * MiB, 0)
    assert sorted(stash_objects(world, upload)) == sorted(s.key for s in after.stash)
    await world.proxy.patch(upload.id, ALICE, 2 * MiB, BytesBody(data[2 * MiB:]))
    assert world.store.object_bytes(upload.key) == data


async def test_a_first_proxy_patch_lowers_the_part_size_to_the_buffer(world: World) -> None:
    """Parts bigger than the buffer would be written twice; from the first byte on, the proxy path uses
    parts no bigger than the buffer instead (an upload nothing was written to or signed for yet)."""
    world = build_world(proxy_buffer=8 * MiB)
    data = payload(30 * MiB + 5)
    upload = await world.create(len(data), part_size=16 * MiB)
    cut = 9 * MiB + 77
    first = await world.proxy.patch(upload.id, ALICE, 0, BytesBody(data, interrupt_after=cut))
    assert (first.part_size, first.offset, first.prefix_parts) == (8 * MiB, cut, 1)
    later = await world.proxy.patch(upload.id, ALICE, cut, BytesBody(data[cut:]))
    assert (later.part_size, later.offset) == (8 * MiB, len(data))
    assert world.store.object_bytes(upload.key) == data
    # Later PATCHes, or an upload that had parts signed, keep their part size.
    signed = await world.create(len(data), part_size=16 * MiB)
    await world.uploads.sign(signed.id, ALICE, [PartRequest(1)], None)
    world.clock.advance(world.limits.presign_ttl + 1)
    assert (await patch(world, signed, 0, data[:MiB])).part_size == 16 * MiB
    assert proxy_part_size(len(data), 16 * MiB, 8 * MiB) == 8 * MiB
    assert proxy_part_size(len(data), 16 * MiB, 32 * MiB) is None  # never larger than planned
    assert proxy_part_size(200 * 1024 * MiB, 64 * MiB, 16 * MiB) == 21 * MiB  # 10,000 parts at most
