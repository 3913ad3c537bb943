"""S3 answers that look like success but are not: a fault-injecting HTTP proxy in front of SeaweedFS."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from tests.support import MiB
from tests.support.db import upload_row
from tests.support.direct import confirm, put_part, sign_ok
from tests.support.gateway import make_settings, start_gateway, upload_id
from tests.support.proxies import S3Proxy
from tests.support.storage import sha256, stored_bytes
from tests.support.tokens import auth


@pytest.fixture
async def faulty_s3(stack) -> AsyncIterator[tuple[S3Proxy, str]]:  # type: ignore[no-untyped-def]
    """Every request goes on to the real S3 unchanged (Host kept, so signatures hold), except that the
    first CompleteMultipartUpload gets 200 with an <Error> body, as AWS documents it may."""
    async with S3Proxy(stack.s3_endpoint_url, complete_faults=1) as fault:
        yield fault, fault.url


async def test_complete_answering_200_with_error_is_not_success(stack, faulty_s3, db, s3) -> None:  # type: ignore[no-untyped-def]
    fault, endpoint = faulty_s3
    # Control calls go through the faulty proxy; presigned part URLs go to the real S3.
    settings = make_settings(stack, s3_endpoint_url=endpoint, s3_public_endpoint_url=stack.s3_endpoint_url)
    async for gw in start_gateway(settings):
        data = os.urandom(5 * MiB + 1)
        location = await gw.create(len(data), **{"Upload-Part-Size": str(5 * MiB)})
        signed = await sign_ok(gw, location, [1, 2])
        for number, part in signed.items():
            assert await put_part(gw, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
            assert (await confirm(gw, location, number))[0] == 204
        row = await upload_row(db, upload_id(location))
        # botocore recognised the <Error> inside the 200 and retried; only then is the upload completed.
        assert fault.completes == 2
        assert row["state"] == "completed"
        assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


async def test_without_multi_object_delete_stash_objects_are_deleted_one_by_one(stack, db, s3) -> None:  # type: ignore[no-untyped-def]
    """A server without DeleteObjects (GCS's XML API answers 501): superseded stash segments still go."""
    async with S3Proxy(stack.s3_endpoint_url, multi_delete=False) as no_bulk:
        settings = make_settings(stack, s3_endpoint_url=no_bulk.url, s3_public_endpoint_url=stack.s3_endpoint_url)
        async for gw in start_gateway(settings):
            data = os.urandom(5 * MiB + 1000)
            location = await gw.create(len(data), **{"Upload-Part-Size": str(5 * MiB)})
            offset = 0
            for chunk in (1 * MiB, 3 * MiB, len(data) - 4 * MiB):  # two stash segments, then the parts
                async with gw.http.patch(location, data=data[offset:offset + chunk], headers={
                        **auth(), "Content-Type": "application/offset+octet-stream",
                        "Upload-Offset": str(offset)}) as response:
                    assert response.status == 204, await response.text()
                offset += chunk
            row = await upload_row(db, upload_id(location))
            assert row["state"] == "completed"
            assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)
            stash = s3.list_objects_v2(Bucket=row["bucket"], Prefix=f"{settings.s3_key_prefix}/stash/{row['id']}/")
            assert stash.get("KeyCount", 0) == 0
            assert no_bulk.deletes >= 2
