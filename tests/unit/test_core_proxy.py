"""The proxy path (tus PATCH): bodies streamed into fixed parts and stash segments, one fenced writer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import MiB, State, Upload
from gateway.core.proxy import STASH_COMPACT_AFTER, ExpectedChecksum
from gateway.core.uploads import PartRequest
from tests.support.memory import ALICE, BytesBody, World, error_of, payload

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
            await self.release.wait()
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


async def test_newer_writer_preempts_a_stalled_one(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    stalled_body = StallingBody(data[:PART], stall_at=1000)
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body))
    await stalled_body.stalled.wait()
    # The client reconnected: a new PATCH at the same offset takes over.
    assert (await patch(world, upload, 0, data[:PART])).offset == PART
    stalled_body.release.set()
    assert (await error_of(stalled)).code is ErrorCode.WRITER_PREEMPTED
    assert (await world.uploads.status(upload.id, ALICE)).offset == PART
    await patch(world, upload, PART, data[PART:])
    assert world.store.object_bytes(upload.key) == data


async def test_preempted_stash_is_not_kept(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    stalled_body = StallingBody(data[:2 * MiB], stall_at=1000)
    stalled = asyncio.create_task(world.proxy.patch(upload.id, ALICE, 0, stalled_body))
    await stalled_body.stalled.wait()
    newer = await patch(world, upload, 0, data[:3 * MiB])
    stalled_body.release.set()
    assert (await error_of(stalled)).code is ErrorCode.WRITER_PREEMPTED
    current = await world.uploads.status(upload.id, ALICE)
    assert current.offset == 3 * MiB and current.stash == newer.stash
    assert stash_objects(world, upload) == [newer.stash[0].key]  # the stale segment was deleted


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


async def test_dropped_connection_keeps_committed_parts(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    body = BytesBody(data, interrupt_after=PART + 2 * MiB)
    kept = await world.proxy.patch(upload.id, ALICE, 0, body)
    assert kept.offset == PART  # bytes after the last boundary are dropped, never counted
    await patch(world, upload, PART, data[PART:])
    assert world.store.object_bytes(upload.key) == data


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
