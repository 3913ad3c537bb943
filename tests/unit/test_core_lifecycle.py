"""The upload state machine over the direct path: create -> sign -> PUT -> confirm -> completing -> completed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.errors import ErrorCode
from gateway.core.model import PartChecksum, State
from gateway.core.uploads import PartRequest
from gateway.http.errors import STATUS
from tests.support.memory import ALICE, BOB, MiB, World, build_world, error_of, payload

PART = 5 * MiB


async def test_direct_upload_completes_with_the_bytes_in_order(world: World) -> None:
    data = payload(2 * PART + 100)
    upload = await world.create(len(data), part_size=PART)
    assert (upload.state, upload.offset, upload.part_count) == (State.ACTIVE, 0, 3)
    await world.put_parts(upload, data, [3, 1, 2])
    after_first = await world.uploads.confirm(upload.id, ALICE, [1])
    assert (after_first.state, after_first.offset) == (State.ACTIVE, PART)
    # Part 3 alone does not move the offset: only the prefix counts.
    assert (await world.uploads.confirm(upload.id, ALICE, [3])).offset == PART
    await world.uploads.confirm(upload.id, ALICE, [2])
    done = await world.uploads.status(upload.id, ALICE)
    assert (done.state, done.offset) == (State.COMPLETED, len(data))
    assert world.store.object_bytes(upload.key) == data
    assert world.store.multipart == {}


async def test_concurrent_confirms_complete_exactly_once(world: World) -> None:
    data = payload(2 * PART + 7)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1, 2, 3])
    results = await asyncio.gather(*(world.uploads.confirm(upload.id, ALICE, [1, 2, 3]) for _ in range(5)))
    assert all(r.offset == len(data) and r.state in (State.COMPLETING, State.COMPLETED) for r in results)
    assert world.store.calls["complete"] == 1
    assert [e for e in world.repo.events if e[0] == "completed"] == [("completed", upload.id)]
    assert (await world.uploads.status(upload.id, ALICE)).state is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data
    # A confirm retried after completion is an idempotent success.
    assert (await world.uploads.confirm(upload.id, ALICE, [3])).state is State.COMPLETED


async def test_zero_length_upload_is_complete_at_once(world: World) -> None:
    upload = await world.create(0)
    assert (upload.state, upload.offset, upload.multipart_id) == (State.COMPLETED, 0, None)
    assert world.store.object_bytes(upload.key) == b""


async def test_sign_refusals(world: World) -> None:
    data = payload(PART + 1)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])
    await world.uploads.confirm(upload.id, ALICE, [1])
    sign = world.uploads.sign
    assert (await error_of(sign(upload.id, ALICE, [PartRequest(1)], None))).code is ErrorCode.PART_CONFIRMED
    assert (await error_of(sign(upload.id, ALICE, [PartRequest(3)], None))).code is ErrorCode.UNKNOWN_PART
    assert (await error_of(sign(upload.id, ALICE, [PartRequest(2), PartRequest(2)], None))).code \
        is ErrorCode.INVALID_REQUEST
    too_many = [PartRequest(n) for n in range(1, world.limits.sign_batch_max + 2)]
    assert (await error_of(sign(upload.id, ALICE, too_many, None))).code is ErrorCode.BATCH_TOO_LARGE


async def test_signed_urls_pin_the_planned_size_and_follow_credentials() -> None:
    world = build_world(credentials_expire=datetime.now(UTC) + timedelta(minutes=10))
    upload = await world.create(PART + 123, part_size=PART)
    signed = await world.uploads.sign(upload.id, ALICE, [PartRequest(1), PartRequest(2)], None)
    assert [(p.number, p.offset, p.length) for p in signed.parts] == [(1, 0, PART), (2, PART, 123)]
    assert [t.size for t in world.signer.signed] == [PART, 123]
    # Valid until 5 minutes before the credentials expire, not the full presign_ttl.
    assert 240 < signed.expires_in <= 300
    # Short-lived credentials: the margin is half the time they have left.
    world.signer.credentials_expire = datetime.now(UTC) + timedelta(minutes=4)
    signed = await world.uploads.sign(upload.id, ALICE, [PartRequest(1)], None)
    assert 110 < signed.expires_in <= 120
    # Credentials about to expire sign nothing: a retryable 503 until they are refreshed.
    world.signer.credentials_expire = datetime.now(UTC) + timedelta(seconds=1)
    error = await error_of(world.uploads.sign(upload.id, ALICE, [PartRequest(1)], None))
    assert error.code is ErrorCode.STORAGE_UNAVAILABLE and error.retry_after


async def test_confirm_waits_for_parts_s3_does_not_list_yet(world: World) -> None:
    data = payload(PART)
    upload = await world.create(len(data), part_size=PART)
    error = await error_of(world.uploads.confirm(upload.id, ALICE, [1]))
    assert error.code is ErrorCode.PART_NOT_VISIBLE and error.details == {"parts": [1]}
    world.store.hide_new_parts = 2  # listed only on the third ListParts: within the retries
    await world.put_parts(upload, data, [1])
    assert (await world.uploads.confirm(upload.id, ALICE, [1])).offset == PART


async def test_confirm_refuses_a_part_of_the_wrong_size(world: World) -> None:
    upload = await world.create(2 * PART, part_size=PART)
    signed = await world.uploads.sign(upload.id, ALICE, [PartRequest(1)], None, pin_length=False)
    await world.store.put_presigned(signed.parts[0].url, payload(PART - 1))
    error = await error_of(world.uploads.confirm(upload.id, ALICE, [1]))
    assert error.code is ErrorCode.SIZE_MISMATCH
    assert error.details["parts"] == [{"number": 1, "expected": PART, "actual": PART - 1}]
    assert (await world.uploads.status(upload.id, ALICE)).offset == 0


async def test_terminate_aborts_and_leaves_a_tombstone(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])
    await world.uploads.terminate(upload.id, ALICE)
    assert world.store.multipart == {}
    for call in (world.uploads.status(upload.id, ALICE), world.uploads.confirm(upload.id, ALICE, [1]),
                 world.uploads.sign(upload.id, ALICE, [PartRequest(2)], None),
                 world.uploads.download(upload.id, ALICE)):
        assert (await error_of(call)).code is ErrorCode.GONE
    await world.uploads.terminate(upload.id, ALICE)  # a repeated DELETE succeeds


async def test_terminate_completed_upload_deletes_the_object(world: World) -> None:
    upload = await world.upload_direct(payload(PART + 1))
    await world.uploads.terminate(upload.id, ALICE)
    assert upload.key not in world.store.objects
    assert (await error_of(world.uploads.status(upload.id, ALICE))).code is ErrorCode.GONE


async def test_terminate_while_completing_is_refused_until_completed(world: World) -> None:
    data = payload(PART + 1)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1, 2])
    world.store.fail("complete", times=1)
    assert (await world.uploads.confirm(upload.id, ALICE, [1, 2])).state is State.COMPLETING
    error = await error_of(world.uploads.terminate(upload.id, ALICE))
    assert error.code is ErrorCode.COMPLETING and error.retry_after
    download = await error_of(world.uploads.download(upload.id, ALICE))
    assert download.code is ErrorCode.NOT_READY and download.retry_after
    world.clock.advance(world.completion_worker.stale_after + 1)
    assert await world.completion_worker.run_once() == 1
    assert (await world.uploads.status(upload.id, ALICE)).state is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data
    assert (await world.uploads.download(upload.id, ALICE)).url.startswith("memory://")


async def test_expired_upload_is_gone_and_swept(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])
    world.clock.advance(world.limits.upload_ttl + 1)
    assert (await error_of(world.uploads.status(upload.id, ALICE))).code is ErrorCode.UPLOAD_EXPIRED
    assert (await error_of(world.uploads.confirm(upload.id, ALICE, [1]))).code is ErrorCode.UPLOAD_EXPIRED
    report = await world.sweeper.run_once()
    assert report.expired == 1
    assert world.store.multipart == {}
    assert ("expired", upload.id) in world.repo.events
    assert (await error_of(world.uploads.status(upload.id, ALICE))).code is ErrorCode.UPLOAD_EXPIRED


async def test_activity_slides_the_expiry(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])
    world.clock.advance(world.limits.upload_ttl - 10)
    await world.uploads.confirm(upload.id, ALICE, [1])
    world.clock.advance(20)  # past the first expiry, within the slid one
    assert (await world.uploads.status(upload.id, ALICE)).offset == PART


async def test_failed_upload_is_a_tombstone(world: World) -> None:
    data = payload(PART + 1)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1, 2])
    world.store.fail("complete", times=1)
    await world.uploads.confirm(upload.id, ALICE, [1, 2])
    await world.store.abort(upload.key, upload.multipart_id or "")  # the multipart upload vanished
    world.clock.advance(world.completion_worker.stale_after + 1)
    await world.completion_worker.run_once()
    error = await error_of(world.uploads.status(upload.id, ALICE))
    assert error.code is ErrorCode.UPLOAD_FAILED and "vanished" in error.message


@pytest.mark.parametrize("code", [ErrorCode.GONE, ErrorCode.UPLOAD_EXPIRED, ErrorCode.UPLOAD_FAILED])
def test_tombstone_codes_answer_410(code: ErrorCode) -> None:
    assert STATUS[code] == 410


async def test_another_owners_upload_does_not_exist(world: World) -> None:
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])
    calls = [world.uploads.status(upload.id, BOB), world.uploads.confirm(upload.id, BOB, [1]),
             world.uploads.sign(upload.id, BOB, [PartRequest(1)], None), world.uploads.terminate(upload.id, BOB),
             world.uploads.download(upload.id, BOB), world.uploads.status("00nonexistent", ALICE)]
    for call in calls:
        assert (await error_of(call)).code is ErrorCode.NOT_FOUND
    assert (await world.uploads.status(upload.id, ALICE)).state is State.ACTIVE
    assert world.store.multipart  # BOB's DELETE aborted nothing


async def test_download_only_when_completed(world: World) -> None:
    data = payload(PART)
    upload = await world.create(len(data), part_size=PART, metadata={"filename": "a.txt"})
    assert (await error_of(world.uploads.download(upload.id, ALICE))).code is ErrorCode.NOT_READY
    await world.put_parts(upload, data, [1])
    await world.uploads.confirm(upload.id, ALICE, [1])
    download = await world.uploads.download(upload.id, ALICE)
    assert "a.txt" in download.url


async def test_activity_never_extends_past_the_max_age() -> None:
    world = build_world(upload_ttl=100, upload_max_age=150)
    data = payload(2 * PART)
    upload = await world.create(len(data), part_size=PART)
    await world.put_parts(upload, data, [1])
    world.clock.advance(90)
    await world.uploads.confirm(upload.id, ALICE, [1])  # slides to min(now + 100, created + 150)
    world.clock.advance(55)
    assert (await world.uploads.status(upload.id, ALICE)).offset == PART
    world.clock.advance(10)
    assert (await error_of(world.uploads.status(upload.id, ALICE))).code is ErrorCode.UPLOAD_EXPIRED


def _sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize("listed", [True, False])
async def test_part_checksums_reach_complete(world: World, listed: bool) -> None:
    """Checksums signed into the URLs end up in CompleteMultipartUpload, also from stores whose
    ListParts does not return them."""
    world.store.list_checksums = listed
    data = payload(PART + 10)
    upload = await world.create(len(data), part_size=PART, checksum=PartChecksum.SHA256)
    pieces = [data[:PART], data[PART:]]
    signed = await world.uploads.sign(upload.id, ALICE, [PartRequest(n + 1, _sha256(p)) for n, p in enumerate(pieces)],
                                      None)
    for part, piece in zip(signed.parts, pieces, strict=True):
        assert part.headers == {"x-amz-checksum-sha256": _sha256(piece)}
        await world.store.put_presigned(part.url, piece, part.headers)
    await world.uploads.confirm(upload.id, ALICE, [1, 2])
    assert (await world.uploads.status(upload.id, ALICE)).state is State.COMPLETED
    assert world.store.object_bytes(upload.key) == data


async def test_part_checksum_required_and_well_formed(world: World) -> None:
    upload = await world.create(PART, part_size=PART, checksum=PartChecksum.SHA256)
    missing = await error_of(world.uploads.sign(upload.id, ALICE, [PartRequest(1)], None))
    assert missing.code is ErrorCode.CHECKSUM_REQUIRED
    wrong_size = await error_of(world.uploads.sign(upload.id, ALICE, [PartRequest(1, "AAAA")], None))
    assert wrong_size.code is ErrorCode.INVALID_REQUEST
    plain = await world.create(PART, part_size=PART)
    extra = await error_of(world.uploads.sign(plain.id, ALICE, [PartRequest(1, _sha256(b""))], None))
    assert extra.code is ErrorCode.INVALID_REQUEST


async def test_s3_style_abort_never_deletes_a_finished_object(world: World) -> None:
    done = await world.upload_direct(payload(PART))
    assert (await error_of(world.uploads.abort_multipart(done.id, ALICE))).code is ErrorCode.UPLOAD_COMPLETED
    assert world.store.object_bytes(done.key)
    active = await world.create(PART, part_size=PART)
    await world.uploads.abort_multipart(active.id, ALICE)
    assert (await error_of(world.uploads.status(active.id, ALICE))).code is ErrorCode.GONE
