"""tus concatenation: the part plan, and final uploads assembled in S3 from partial uploads."""

from __future__ import annotations

import random

from gateway.core.concat import plan_parts
from gateway.core.errors import ErrorCode
from gateway.core.model import S3_MAX_PART_SIZE, S3_MIN_PART_SIZE, GiB, MiB, State, Upload
from tests.support.memory import ALICE, BOB, BytesBody, World, error_of, payload


def shape(sources: list[tuple[str, int]]) -> list[tuple[int, bool, list[tuple[str, int, int]]]]:
    return [(p.size, p.copy, [(x.key, x.start, x.end) for x in p.pieces]) for p in plan_parts(sources)]


def test_large_partials_are_copied_in_s3() -> None:
    assert shape([("a", 12 * MiB), ("b", 7 * MiB)]) == [
        (12 * MiB, True, [("a", 0, 12 * MiB)]), (7 * MiB, True, [("b", 0, 7 * MiB)])]


def test_small_partials_are_joined_into_5_mib_parts() -> None:
    assert shape([("a", 1 * MiB), ("b", 2 * MiB), ("c", 3 * MiB)]) == [
        (5 * MiB, False, [("a", 0, MiB), ("b", 0, 2 * MiB), ("c", 0, 2 * MiB)]),
        (1 * MiB, False, [("c", 2 * MiB, 3 * MiB)])]


def test_parts_larger_than_s3_allows_are_split() -> None:
    assert shape([("a", 5 * GiB + MiB), ("b", 10 * MiB)]) == [
        (5 * GiB, True, [("a", 0, 5 * GiB)]),
        (5 * MiB, False, [("a", 5 * GiB, 5 * GiB + MiB), ("b", 0, 4 * MiB)]),
        (6 * MiB, True, [("b", 4 * MiB, 10 * MiB)])]


def test_empty_partials_add_no_parts() -> None:
    assert plan_parts([("a", 0), ("b", 0)]) == []
    assert shape([("a", 0), ("b", MiB)]) == [(MiB, False, [("b", 0, MiB)])]


def test_plan_is_a_valid_multipart_upload_of_the_concatenation() -> None:
    rng = random.Random(2)
    sizes = [0, 1, MiB, S3_MIN_PART_SIZE - 1, S3_MIN_PART_SIZE, S3_MIN_PART_SIZE + 1, S3_MAX_PART_SIZE,
             S3_MAX_PART_SIZE + 1]
    for _ in range(500):
        lengths = [rng.choice([rng.choice(sizes), rng.randint(0, 12 * GiB), rng.randint(0, 20 * MiB)])
                   for _ in range(rng.randint(1, 8))]
        check_plan([(f"k{i}", n) for i, n in enumerate(lengths)])


def check_plan(sources: list[tuple[str, int]]) -> None:
    plan = plan_parts(sources)
    assert [p.number for p in plan] == list(range(1, len(plan) + 1))
    assert all(p.size >= S3_MIN_PART_SIZE for p in plan[:-1])
    assert all(p.size <= S3_MAX_PART_SIZE for p in plan)
    assert all(len(p.pieces) == 1 for p in plan if p.copy)
    # The pieces, in order, are exactly the sources' bytes, in order.
    pieces = [x for p in plan for x in p.pieces]
    covered: list[tuple[str, int, int]] = []
    for x in pieces:
        if covered and covered[-1][0] == x.key and covered[-1][2] == x.start:
            covered[-1] = (x.key, covered[-1][1], x.end)
        else:
            covered.append((x.key, x.start, x.end))
    assert covered == [(k, 0, n) for k, n in sources if n > 0]


async def partial(world: World, data: bytes, owner=ALICE) -> Upload:  # type: ignore[no-untyped-def]
    upload = await world.create(len(data), owner, part_size=5 * MiB, partial=True)
    if data:
        await world.proxy.patch(upload.id, owner, 0, BytesBody(data))
    done = await world.repo.get(upload.id)
    assert done is not None and done.state is State.COMPLETED
    return done


async def test_final_upload_holds_the_partials_in_order(world: World) -> None:
    a, b = payload(6 * MiB, seed=1), payload(3 * MiB, seed=2)
    first, second = await partial(world, a), await partial(world, b)
    final = await world.concat.create_final(ALICE, [first.id, second.id, first.id], {"filename": "all.bin"})
    assert (final.state, final.length, final.concat) == (State.COMPLETED, len(a + b + a), "final")
    assert final.concat_partials == (first.id, second.id, first.id)
    assert world.store.object_bytes(final.key) == a + b + a
    assert world.store.calls["upload_part_copy"] >= 1  # the large range never passed through the gateway
    reversed_final = await world.concat.create_final(ALICE, [second.id, first.id], {})
    assert world.store.object_bytes(reversed_final.key) == b + a


async def test_final_of_empty_partials_is_empty(world: World) -> None:
    empty = await partial(world, b"")
    final = await world.concat.create_final(ALICE, [empty.id], {})
    assert (final.length, world.store.object_bytes(final.key)) == (0, b"")


async def test_bad_finals(world: World) -> None:
    done = await partial(world, payload(MiB))
    plain = await world.upload_direct(payload(MiB))
    unfinished = await world.create(2 * MiB, partial=True)
    bobs = await partial(world, payload(MiB), BOB)
    cases = {
        (): ErrorCode.INVALID_CONCAT,
        (plain.id,): ErrorCode.INVALID_CONCAT,  # not a partial upload
        (done.id, unfinished.id): ErrorCode.UPLOAD_NOT_FINISHED,
        (bobs.id,): ErrorCode.INVALID_CONCAT,  # another owner's: as if missing
        ("00missing",): ErrorCode.INVALID_CONCAT,
    }
    for ids, code in cases.items():
        assert (await error_of(world.concat.create_final(ALICE, list(ids), {}))).code is code, ids


async def test_failed_assembly_leaves_no_multipart_upload(world: World) -> None:
    big = await partial(world, payload(6 * MiB))
    world.store.fail("upload_part_copy")
    error = await error_of(world.concat.create_final(ALICE, [big.id], {}))
    assert error.code is ErrorCode.STORAGE_UNAVAILABLE
    assert world.store.multipart == {}
    assert [r for r in world.repo.rows.values() if r.new.concat == "final"] == []


async def test_final_upload_cannot_be_patched(world: World) -> None:
    final = await world.concat.create_final(ALICE, [(await partial(world, payload(MiB))).id], {})
    error = await error_of(world.proxy.patch(final.id, ALICE, final.length or 0, BytesBody(b"x")))
    assert error.code is ErrorCode.MODIFY_FINAL


async def test_a_partial_left_completing_by_a_dead_instance_is_taken_over_by_the_final(world: World) -> None:
    """The soak's finding: the partial's client saw offset = length, its instance died before S3 finished
    it; the final creation answers 409 `completing` (retryable) while the lease holds, then takes over."""
    data = payload(MiB, seed=3)
    upload = await world.create(len(data), part_size=5 * MiB, partial=True)
    world.store.fail("complete", times=1)
    await world.proxy.patch(upload.id, ALICE, 0, BytesBody(data))
    left = await world.repo.get(upload.id)
    assert left is not None and left.state is State.COMPLETING
    refused = await error_of(world.concat.create_final(ALICE, [upload.id], {}))
    assert refused.code is ErrorCode.COMPLETING and refused.retry_after
    world.clock.advance(world.limits.completion_retry_after + 1)  # the lease lapsed
    final = await world.concat.create_final(ALICE, [upload.id], {})
    assert world.store.object_bytes(final.key) == data
