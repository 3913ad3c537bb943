"""The fixed part plan, deferred length declarations and the offset arithmetic."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import (
    S3_MAX_PART_SIZE,
    S3_MAX_PARTS,
    S3_MIN_PART_SIZE,
    GiB,
    MiB,
    Owner,
    StashSegment,
    State,
    Upload,
    parts_needed,
    plan_part_size,
)
from gateway.core.rules import planned_with_length
from gateway.core.uploads import PartRequest
from tests.support.memory import ALICE, World, build_world, error_of, payload

PART = 5 * MiB


@pytest.mark.parametrize(("length", "configured", "hint", "expected"), [
    (100 * MiB, 5 * MiB, 8 * MiB, 8 * MiB),            # the client's hint wins
    (2 * GiB, 5 * MiB, 8 * MiB, 8 * MiB),              # ... even for a large file
    (10 * MiB, 5 * MiB, 1 * MiB, S3_MIN_PART_SIZE),    # clamped to S3's minimum
    (10 * GiB, 5 * MiB, 6 * GiB, S3_MAX_PART_SIZE),    # ... and maximum
    (100 * MiB, 8 * MiB, None, 8 * MiB),               # the configured size
    (1 * GiB, 8 * MiB, None, 8 * MiB),                 # exactly 1 GiB is not large yet
    (1 * GiB + 1, 8 * MiB, None, 64 * MiB),            # larger files get 64 MiB parts
    (None, 8 * MiB, None, 64 * MiB),                   # so do uploads of unknown length
    (None, 8 * MiB, 5 * MiB, 5 * MiB),                 # unless the client asks otherwise
    (2 * GiB, 128 * MiB, None, 128 * MiB),             # a larger configured size is kept
    (1024 * GiB, 8 * MiB, None, 105 * MiB),            # 1 TiB: rounded up to MiB to fit 10,000 parts
    (100 * GiB, 5 * MiB, 5 * MiB, 11 * MiB),           # a hint too small for 10,000 parts is raised
])
def test_plan_part_size(length: int | None, configured: int, hint: int | None, expected: int) -> None:
    size = plan_part_size(length, configured, hint)
    assert size == expected
    if length is not None:
        assert parts_needed(length, size) <= S3_MAX_PARTS


def test_plan_is_always_a_valid_s3_plan() -> None:
    # A seeded sample (property tests with hypothesis cost seconds of import time here).
    rng = random.Random(1)
    edges = [0, 1, S3_MIN_PART_SIZE, GiB, GiB + 1, S3_MAX_PART_SIZE * S3_MAX_PARTS]
    for _ in range(3000):
        length = rng.choice([None, rng.choice(edges), rng.randint(0, S3_MAX_PART_SIZE * S3_MAX_PARTS)])
        configured = rng.randint(S3_MIN_PART_SIZE, S3_MAX_PART_SIZE)
        hint = rng.choice([None, rng.randint(1, 2 * S3_MAX_PART_SIZE)])
        size = plan_part_size(length, configured, hint)
        assert S3_MIN_PART_SIZE <= size <= S3_MAX_PART_SIZE, (length, configured, hint)
        if length is not None:
            assert parts_needed(length, size) <= S3_MAX_PARTS, (length, configured, hint)


async def test_create_refuses_what_no_plan_fits() -> None:
    world = build_world(max_upload_size=60 * 1024 * GiB)
    too_big = S3_MAX_PART_SIZE * S3_MAX_PARTS + 1
    assert (await error_of(world.create(too_big))).code is ErrorCode.INVALID_PART_SIZE
    assert world.store.multipart == {} and world.repo.rows == {}


async def test_create_refuses_more_than_the_maximum(world: World) -> None:
    error = await error_of(world.create(world.limits.max_upload_size + 1))
    assert error.code is ErrorCode.MAX_SIZE_EXCEEDED
    assert world.store.multipart == {}


def _upload(**fields: Any) -> Upload:
    base = Upload(id="00x", owner=Owner("iss", "sub"), length=None, part_size=PART, part_checksum=None,
                  metadata={}, bucket="b", key="k", multipart_id="m", state=State.ACTIVE, prefix_parts=0,
                  expires_at=datetime.now(UTC), is_expired=False)
    return replace(base, **fields)


def _seg(part: int, seq: int, size: int) -> StashSegment:
    return StashSegment(part, seq, f"stash/{part}/{seq}", size)


def test_offset_counts_the_prefix_and_the_stash() -> None:
    assert _upload(prefix_parts=2).offset == 2 * PART
    stashed = _upload(length=20 * MiB, prefix_parts=2, stash=(_seg(3, 1, 1 * MiB), _seg(3, 2, 2 * MiB)))
    assert stashed.offset == 2 * PART + 3 * MiB
    assert stashed.stash_bytes == 3 * MiB
    # Parts confirmed past a gap do not count.
    assert _upload(length=20 * MiB, prefix_parts=1, confirmed_beyond_prefix=(3,)).offset == PART


def test_offset_is_capped_and_final_once_completing() -> None:
    assert _upload(length=11 * MiB, prefix_parts=3).offset == 11 * MiB
    assert _upload(length=11 * MiB, prefix_parts=0, state=State.COMPLETING).offset == 11 * MiB
    assert _upload(length=11 * MiB, state=State.COMPLETED).offset == 11 * MiB


def test_part_ranges() -> None:
    known = _upload(length=11 * MiB)
    assert known.part_count == 3
    assert [known.part_range(n) for n in (1, 2, 3)] == [(0, PART), (PART, PART), (2 * PART, 1 * MiB)]
    assert known.valid_part_number(3) and not known.valid_part_number(4) and not known.valid_part_number(0)
    assert known.limit == 11 * MiB
    deferred = _upload()
    assert deferred.part_count is None
    assert deferred.part_range(7) == (6 * PART, PART)  # all full-size until the length is known
    assert deferred.limit == deferred.max_length == PART * S3_MAX_PARTS
    assert deferred.valid_part_number(S3_MAX_PARTS) and not deferred.valid_part_number(S3_MAX_PARTS + 1)
    assert _upload(length=0).part_count == 1


def test_a_deferred_upload_may_be_declared_empty() -> None:
    # Completion then stores an empty object (S3 refuses an empty multipart upload).
    assert planned_with_length(_upload(), 0, GiB).length == 0


@pytest.mark.parametrize(("upload", "length", "max_size", "code"), [
    (_upload(length=10 * MiB), 11 * MiB, GiB, ErrorCode.LENGTH_ALREADY_SET),
    (_upload(), GiB + 1, GiB, ErrorCode.MAX_SIZE_EXCEEDED),                    # the configured maximum
    (_upload(), 49 * GiB, 100 * GiB, ErrorCode.MAX_SIZE_EXCEEDED),             # 10,000 parts of 5 MiB
    (_upload(prefix_parts=2), 7 * MiB, GiB, ErrorCode.LENGTH_CONFLICT),        # below the offset
    (_upload(stash=(_seg(1, 1, 3 * MiB),)), 2 * MiB, GiB, ErrorCode.LENGTH_CONFLICT),
    (_upload(confirmed_beyond_prefix=(3,)), 12 * MiB, GiB, ErrorCode.LENGTH_CONFLICT),  # part 3 ends at 15 MiB
])
def test_length_declarations_refused(upload: Upload, length: int, max_size: int, code: ErrorCode) -> None:
    with pytest.raises(UploadError) as caught:
        planned_with_length(upload, length, max_size)
    assert caught.value.code is code


def test_length_declarations_accepted() -> None:
    assert planned_with_length(_upload(length=10 * MiB), 10 * MiB, GiB).length == 10 * MiB  # the same again
    assert planned_with_length(_upload(), None, GiB).length is None
    planned = planned_with_length(_upload(prefix_parts=2, confirmed_beyond_prefix=(3,)), 15 * MiB, GiB)
    assert (planned.length, planned.part_count) == (15 * MiB, 3)


async def test_deferred_length_declared_when_signing(world: World) -> None:
    data = payload(2 * PART + 10)
    upload = await world.create(None, part_size=PART)
    assert (upload.length, upload.part_size) == (None, PART)
    await world.put_parts(upload, data, [1, 2])
    await world.uploads.confirm(upload.id, ALICE, [1, 2])
    # A refused declaration changes nothing.
    refused = await error_of(world.uploads.sign(upload.id, ALICE, [PartRequest(3)], 3 * MiB))
    assert refused.code is ErrorCode.LENGTH_CONFLICT
    assert (await world.uploads.status(upload.id, ALICE)).length is None
    signed = await world.uploads.sign(upload.id, ALICE, [PartRequest(3)], len(data))
    assert (signed.upload.length, signed.parts[0].length) == (len(data), 10)
    again = await error_of(world.uploads.sign(upload.id, ALICE, [], len(data) + 1))
    assert again.code is ErrorCode.LENGTH_ALREADY_SET
    await world.store.put_presigned(signed.parts[0].url, data[2 * PART:])
    assert (await world.uploads.confirm(upload.id, ALICE, [3])).offset == len(data)
    assert world.store.object_bytes(upload.key) == data


async def test_declaring_a_length_the_parts_already_cover_completes(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(None, part_size=PART)
    await world.put_parts(upload, data, [1, 2])
    await world.uploads.confirm(upload.id, ALICE, [1, 2])
    await world.uploads.sign(upload.id, ALICE, [], len(data))
    assert (await world.uploads.status(upload.id, ALICE)).state is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data


async def test_a_deferred_upload_declared_empty_by_sign(world: World) -> None:
    upload = await world.create(None, part_size=PART)
    # Parts of an empty upload: refused before anything changes (the fuzzer's find).
    refused = await error_of(world.uploads.sign(upload.id, ALICE, [PartRequest(1)], 0))
    assert refused.code is ErrorCode.UNKNOWN_PART
    assert (await world.uploads.status(upload.id, ALICE)).length is None
    await world.uploads.sign(upload.id, ALICE, [], 0)
    done = await world.uploads.status(upload.id, ALICE)
    assert (done.state, done.length, world.store.object_bytes(upload.key)) == (State.COMPLETED, 0, b"")


async def test_deferred_upload_cannot_sign_parts_past_the_maximum_size() -> None:
    world = build_world(max_upload_size=20 * MiB)
    upload = await world.create(None, part_size=PART)
    error = await error_of(world.uploads.sign(upload.id, ALICE, [PartRequest(5)], None))  # bytes 20..25 MiB
    assert error.code in (ErrorCode.UNKNOWN_PART, ErrorCode.MAX_SIZE_EXCEEDED)
