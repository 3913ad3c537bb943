"""S3 answers that look like success but are not: a fault-injecting HTTP proxy in front of SeaweedFS."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.conftest import make_settings, start_gateway, upload_id
from tests.direct import MiB, confirm, put_part, sha256, sign_ok, stored_bytes

ERROR_IN_200 = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class FaultyS3:
    """Forwards every request to the real S3 unchanged (Host kept, so signatures hold), except that
    the first CompleteMultipartUpload gets 200 with an <Error> body, as AWS documents it may."""

    def __init__(self, upstream: str) -> None:
        self.upstream = URL(upstream)
        self.completes = 0
        self.faults = 1

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and "uploadId" in request.query:
            self.completes += 1
            if self.faults:
                self.faults -= 1
                await request.read()
                return web.Response(status=200, body=ERROR_IN_200, content_type="application/xml")
        target = self.upstream.with_path(request.raw_path.split("?")[0], encoded=True).with_query(
            request.raw_path.partition("?")[2] or None)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("transfer-encoding",)}
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            async with http.request(request.method, URL(str(target), encoded=True), headers=headers,
                                    data=await request.read(), allow_redirects=False) as upstream:
                body = await upstream.read()
                out = {k: v for k, v in upstream.headers.items()
                       if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
                return web.Response(status=upstream.status, body=body, headers=out)


@pytest.fixture
async def faulty_s3(stack) -> AsyncIterator[tuple[FaultyS3, str]]:  # type: ignore[no-untyped-def]
    fault = FaultyS3(stack.s3_endpoint_url)
    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", fault.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield fault, str(server.make_url("")).rstrip("/")
    await server.close()


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
        row = await db.fetchrow("select state, bucket, s3_key from uploads where id = $1", upload_id(location))
        # botocore recognised the <Error> inside the 200 and retried; only then is the upload completed.
        assert fault.completes == 2
        assert row["state"] == "completed"
        assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)
