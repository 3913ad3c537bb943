"""presigned-parts: bytes go straight to S3, the gateway signs, verifies and keeps the offset."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random

import pytest

from gateway.http.keys import SERVICE
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.direct import confirm, offset, put_part, sign, sign_ok, upload_direct
from tests.support.gateway import Gateway, make_settings, start_gateway, upload_id
from tests.support.storage import sha256, stored_bytes
from tests.support.tokens import auth

PART = 5 * MiB
HINT = {"Upload-Part-Size": str(PART)}


async def test_multipart_upload_end_to_end(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * PART + 12345)
    location = await gateway.create(len(data), **HINT)
    signed = await sign_ok(gateway, location, [1, 2, 3, 4])
    assert [signed[n]["length"] for n in (1, 2, 3, 4)] == [PART, PART, PART, 12345]
    assert signed[2]["offset"] == PART and signed[1]["method"] == "PUT" and signed[1]["headers"] == {}
    offsets = []
    for number in (1, 2, 3, 4):
        part = signed[number]
        assert await put_part(gateway, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
        status, new_offset = await confirm(gateway, location, number)
        assert status == 204
        offsets.append(int(new_offset or -1))
    assert offsets == [PART, 2 * PART, 3 * PART, len(data)]
    upload = await upload_row(db, upload_id(location))
    assert upload["state"] == "completed"
    assert sha256(stored_bytes(s3, gateway.settings.s3_bucket, upload["s3_key"])) == sha256(data)
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(len(data))


async def test_out_of_order_and_parallel(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(6 * PART)
    location = await gateway.create(len(data), **HINT)
    signed = await sign_ok(gateway, location, [6, 5, 4, 3, 2, 1])

    async def put(number: int) -> int:
        part = signed[number]
        return await put_part(gateway, part, data[part["offset"]:part["offset"] + part["length"]])

    assert await asyncio.gather(*(put(n) for n in (4, 2, 6, 1, 3, 5))) == [200] * 6
    # Confirms out of order: the offset is the longest confirmed prefix.
    assert await confirm(gateway, location, 3) == (204, "0")
    assert await confirm(gateway, location, 2) == (204, "0")
    assert await confirm(gateway, location, 1) == (204, str(3 * PART))
    results = await asyncio.gather(*(confirm(gateway, location, n) for n in (6, 5, 4)))
    assert all(status == 204 for status, _ in results)
    assert await offset(gateway, location) == len(data)
    upload = await upload_row(db, upload_id(location))
    assert upload["state"] == "completed"
    assert sha256(stored_bytes(s3, gateway.settings.s3_bucket, upload["s3_key"])) == sha256(data)


async def test_batch_confirm(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * PART + 1)
    location = await gateway.create(len(data), **HINT)
    signed = await sign_ok(gateway, location, [1, 2, 3])
    for _number, part in signed.items():
        assert await put_part(gateway, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
    async with gateway.http.put(f"{location}/parts", json={"parts": [3, 1, 2]}, headers=auth()) as response:
        assert response.status == 204
        assert response.headers["Upload-Offset"] == str(3 * PART)
    assert (await upload_row(db, upload_id(location)))["prefix_parts"] == 3


async def test_lost_confirm_recovered_by_head_and_listing(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * PART)
    location = await gateway.create(len(data), **HINT)
    signed = await sign_ok(gateway, location, [1, 2])
    for number in (1, 2):
        part = signed[number]
        assert await put_part(gateway, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
    # The client died before confirming; a resuming client's HEAD finds the parts in S3.
    assert await offset(gateway, location) == 2 * PART
    async with gateway.http.get(f"{location}/parts", headers=auth()) as response:
        body = await response.json()
        assert [p["number"] for p in body["parts"]] == [1, 2] and body["offset"] == 2 * PART
    confirmed = await db.fetch("select number, size from upload_parts where upload_id = $1 order by number",
                               upload_id(location))
    assert [(r["number"], r["size"]) for r in confirmed] == [(1, PART), (2, PART)]


async def test_head_does_not_fail_when_s3_is_down(stack, db) -> None:  # type: ignore[no-untyped-def]
    async for gw in start_gateway(make_settings(stack)):
        location = await gw.create(2 * PART, **HINT)
        await sign_ok(gw, location, [1])  # a pending signed part makes HEAD want to reconcile
        # Same database row, served by an instance whose S3 is unreachable.
        async for broken in start_gateway(make_settings(stack, s3_endpoint_url="http://127.0.0.1:9",
                                                        s3_key_prefix=gw.settings.s3_key_prefix)):
            async with broken.http.head(location.replace(gw.url, broken.url), headers=auth()) as response:
                assert response.status == 200
                assert response.headers["Upload-Offset"] == "0"


async def test_wrong_size_part_refused_by_s3(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(2 * PART, **HINT)
    part = (await sign_ok(gateway, location, [1]))[1]
    # The signature pins Content-Length: S3 itself refuses a short body.
    assert await put_part(gateway, part, os.urandom(PART - 1)) == 403
    status, _ = await confirm(gateway, location, 1)
    assert status == 409
    assert (await upload_row(db, upload_id(location)))["prefix_parts"] == 0
    assert await offset(gateway, location) == 0


async def test_size_mismatch_is_409(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(2 * PART, **HINT)
    upload = await upload_row(db, upload_id(location))
    # A part of the wrong size reaches S3 by another route; confirm must not count it.
    s3.upload_part(Bucket=upload["bucket"], Key=upload["s3_key"], UploadId=upload["multipart_id"],
                   PartNumber=1, Body=b"x" * 1000)
    async with gateway.http.put(f"{location}/parts/1", headers=auth()) as response:
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "size_mismatch"
    assert (await upload_row(db, upload_id(location)))["prefix_parts"] == 0


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
async def test_corrupted_part_refused_by_checksum(gateway: Gateway, db, s3, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART + 10)
    location = await gateway.create(len(data), **HINT, **{"Upload-Part-Checksum": algorithm})
    digest = lambda chunk: base64.b64encode(hashlib.new(algorithm, chunk).digest()).decode()  # noqa: E731
    first, second = data[:PART], data[PART:]
    status, body = await sign(gateway, location, [1])
    assert status == 400 and body["error"]["code"] == "checksum_required"
    signed = await sign_ok(gateway, location, [{"number": 1, "checksum": digest(first)},
                                               {"number": 2, "checksum": digest(second)}])
    header = "x-amz-checksum-sha256" if algorithm == "sha256" else "Content-MD5"
    assert list(signed[1]["headers"]) == [header]
    corrupted = bytes([first[0] ^ 1]) + first[1:]
    assert await put_part(gateway, signed[1], corrupted) in (400, 403)
    assert (await confirm(gateway, location, 1))[0] == 409
    assert await put_part(gateway, signed[1], first) == 200
    assert await put_part(gateway, signed[2], second) == 200
    assert await confirm(gateway, location, 1) == (204, str(PART))
    assert await confirm(gateway, location, 2) == (204, str(len(data)))
    upload = await upload_row(db, upload_id(location))
    assert upload["state"] == "completed"
    assert sha256(stored_bytes(s3, upload["bucket"], upload["s3_key"])) == sha256(data)


async def test_concurrent_confirms_complete_exactly_once(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART + 777)
    location = await gateway.create(len(data), **HINT)
    signed = await sign_ok(gateway, location, [1, 2])
    for _number, part in signed.items():
        assert await put_part(gateway, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
    assert (await confirm(gateway, location, 1))[0] == 204
    store = gateway.app[SERVICE].store
    real_complete = store.complete
    calls = []

    async def counting_complete(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        return await real_complete(*args, **kwargs)

    store.complete = counting_complete  # type: ignore[method-assign]
    results = await asyncio.gather(*(confirm(gateway, location, 2) for _ in range(50)))
    assert results == [(204, str(len(data)))] * 50
    assert len(calls) == 1
    upload = await upload_row(db, upload_id(location))
    assert upload["state"] == "completed"
    assert sha256(stored_bytes(s3, upload["bucket"], upload["s3_key"])) == sha256(data)


async def test_expired_url_refused_and_resigned(stack, db, s3) -> None:  # type: ignore[no-untyped-def]
    async for gw in start_gateway(make_settings(stack, presign_ttl=2)):
        data = os.urandom(PART)
        location = await gw.create(len(data), **HINT)
        part = (await sign_ok(gw, location, [1]))[1]
        await asyncio.sleep(3.5)
        assert await put_part(gw, part, data) == 403
        fresh = (await sign_ok(gw, location, [1]))[1]
        assert await put_part(gw, fresh, data) == 200
        assert await confirm(gw, location, 1) == (204, str(len(data)))
        upload = await upload_row(db, upload_id(location))
        assert sha256(stored_bytes(s3, upload["bucket"], upload["s3_key"])) == sha256(data)


async def test_exact_multiple_of_part_size(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(2 * PART)
    location = await gateway.create(len(data), **HINT)
    status, body = await sign(gateway, location, [3])
    assert status == 400 and body["error"]["code"] == "unknown_part"
    await upload_direct(gateway, location, data, PART)
    upload = await upload_row(db, upload_id(location))
    assert upload["state"] == "completed"
    assert sha256(stored_bytes(s3, upload["bucket"], upload["s3_key"])) == sha256(data)


async def test_deferred_length(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(2 * PART + 4321)
    location = await gateway.create(None, **HINT)
    first = await sign_ok(gateway, location, [1, 2])
    assert first[2]["length"] == PART
    for number, part in first.items():
        assert await put_part(gateway, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
        assert (await confirm(gateway, location, number))[0] == 204
    status, body = await sign(gateway, location, [3], length=PART)
    assert status == 409 and body["error"]["code"] == "length_conflict"
    last = (await sign_ok(gateway, location, [3], length=len(data)))[3]
    assert last["length"] == 4321
    status, body = await sign(gateway, location, [], length=len(data) + 1)
    assert status == 400
    assert await put_part(gateway, last, data[2 * PART:]) == 200
    assert await confirm(gateway, location, 3) == (204, str(len(data)))
    upload = await upload_row(db, upload_id(location))
    assert upload["state"] == "completed" and upload["length"] == len(data)
    assert sha256(stored_bytes(s3, upload["bucket"], upload["s3_key"])) == sha256(data)


async def test_signing_confirmed_part_is_409(gateway: Gateway) -> None:
    data = os.urandom(2 * PART)
    location = await gateway.create(len(data), **HINT)
    part = (await sign_ok(gateway, location, [1]))[1]
    assert await put_part(gateway, part, data[:PART]) == 200
    assert (await confirm(gateway, location, 1))[0] == 204
    assert await confirm(gateway, location, 1) == (204, str(PART))  # idempotent
    status, body = await sign(gateway, location, [1, 2])
    assert status == 409
    assert body["error"]["code"] == "part_confirmed" and body["error"]["details"]["parts"] == [1]


@pytest.mark.parametrize(("body", "code"), [
    ({"parts": [0]}, "unknown_part"),
    ({"parts": [3]}, "unknown_part"),
    ({"parts": [10001]}, "unknown_part"),
    ({"parts": [1, 1]}, "invalid_request"),
    ({"parts": []}, "invalid_request"),
    ({"parts": "1"}, "invalid_request"),
    ({"parts": [1.5]}, "invalid_request"),
    ({"parts": [True]}, "invalid_request"),
    ({"parts": [{"number": 1, "checksum": "abc"}]}, "invalid_request"),
    ({"parts": [1], "length": -5}, "invalid_request"),
    ({"parts": list(range(1, 1002))}, "batch_too_large"),
])
async def test_bad_sign_requests(gateway: Gateway, db, body: dict, code: str) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(2 * PART, **HINT)
    before = await upload_row(db, upload_id(location))
    async with gateway.http.post(f"{location}/parts", json=body, headers=auth()) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == code
    after = await upload_row(db, upload_id(location))
    assert (after["signed_max_part"], after["expires_at"]) == (before["signed_max_part"], before["expires_at"])


async def test_malformed_json_is_400(gateway: Gateway) -> None:
    location = await gateway.create(2 * PART, **HINT)
    for raw in (b"{", b"[1,2]", b"\xff\xfe"):
        async with gateway.http.post(f"{location}/parts", data=raw, headers=auth()) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "invalid_request"
    async with gateway.http.put(f"{location}/parts/abc", headers=auth()) as response:
        assert response.status == 400


async def test_sign_on_ended_uploads(gateway: Gateway) -> None:
    completed = await gateway.create(0)
    status, body = await sign(gateway, completed, [1])
    assert status == 409 and body["error"]["code"] == "upload_completed"
    terminated = await gateway.create(PART, **HINT)
    async with gateway.http.delete(terminated, headers=auth()) as response:
        assert response.status == 204
    status, body = await sign(gateway, terminated, [1])
    assert status == 410


async def test_expired_upload_is_410(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(PART, **HINT)
    await db.execute("update uploads set expires_at = now() - interval '1 second' where id = $1", upload_id(location))
    status, body = await sign(gateway, location, [1])
    assert status == 410 and body["error"]["code"] == "upload_expired"
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.status == 410


async def test_other_owner_cannot_sign_confirm_or_list(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(2 * PART, **HINT)
    status, _ = await sign(gateway, location, [1], subject="mallory")
    assert status == 404
    assert (await confirm(gateway, location, 1, subject="mallory"))[0] == 404
    async with gateway.http.get(f"{location}/parts", headers=auth("mallory")) as response:
        assert response.status == 404
    async with gateway.http.get(location, headers=auth("mallory")) as response:
        assert response.status == 404
    assert (await upload_row(db, upload_id(location)))["signed_max_part"] == 0


async def test_download(gateway: Gateway) -> None:
    data = os.urandom(1000)
    name = base64.b64encode("rapport d'été <1>.pdf".encode()).decode()
    kind = base64.b64encode(b"text/html").decode()
    location = await gateway.create(len(data), **{"Upload-Metadata": f"filename {name},filetype {kind}"})
    async with gateway.http.get(location, headers=auth()) as response:
        assert response.status == 409 and (await response.json())["error"]["code"] == "not_ready"
    await upload_direct(gateway, location, data, PART)
    async with gateway.http.get(location, headers={**auth(), "Accept": "application/json"}) as response:
        assert response.status == 200
        url = (await response.json())["url"]
    async with gateway.http.get(location, headers=auth(), allow_redirects=False) as response:
        assert response.status == 302 and "X-Amz-Signature=" in response.headers["Location"]
    from yarl import URL
    async with gateway.http.get(URL(url, encoded=True)) as response:
        assert response.status == 200
        assert await response.read() == data
        disposition = response.headers["Content-Disposition"]
        assert disposition.startswith("attachment;") and "filename*=UTF-8''rapport%20d%27%C3%A9t%C3%A9" in disposition
        # text/html is not on the allow-list: the bucket never serves it as a page.
        assert response.headers["Content-Type"] == "application/octet-stream"


async def test_random_order_many_parts_with_duplicates(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(8 * PART)
    location = await gateway.create(len(data), **HINT)
    signed = await sign_ok(gateway, location, list(range(1, 9)))
    order = list(range(1, 9))
    random.shuffle(order)
    for number in order + order[:2]:  # re-uploading a part replaces it with the same bytes
        part = signed[number]
        assert await put_part(gateway, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
    async with gateway.http.put(f"{location}/parts", json={"parts": order}, headers=auth()) as response:
        assert response.status == 204 and response.headers["Upload-Offset"] == str(len(data))
    upload = await upload_row(db, upload_id(location))
    assert sha256(stored_bytes(s3, upload["bucket"], upload["s3_key"])) == sha256(data)


async def test_confirm_sees_every_part_when_the_store_lists_by_name(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    """SeaweedFS lists parts by file name (10000 sorts before 1000): a batch confirm must still see
    parts 1000..1005 rather than call them missing."""
    location = await gateway.create(None, **HINT)
    upload = await upload_row(db, upload_id(location))
    for number in [*range(1, 1006), 10000]:  # tiny parts: what is observable is which ones are seen
        s3.upload_part(Bucket=upload["bucket"], Key=upload["s3_key"], UploadId=upload["multipart_id"],
                       PartNumber=number, Body=b"x")
    async with gateway.http.put(f"{location}/parts", json={"parts": list(range(1, 1006))},
                                headers=auth()) as response:
        assert response.status == 409
        error = (await response.json())["error"]
    assert error["code"] == "size_mismatch"  # not part_not_visible: all 1,005 were found
    assert [p["number"] for p in error["details"]["parts"]] == list(range(1, 1006))
