"""tus 1.0.0 core, creation, defer-length, expiration and termination against real Postgres and S3."""

from __future__ import annotations

import base64
import json
from email.utils import parsedate_to_datetime

import pytest
from botocore.exceptions import ClientError

from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, start_gateway, upload_id
from tests.support.tokens import TUS, auth, claims, token, unsigned


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def error_of(response) -> dict:  # type: ignore[no-untyped-def]
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(await response.text())
    assert set(body["error"]) >= {"code", "message"}
    return body["error"]


async def test_options_discovery_never_412(gateway: Gateway) -> None:
    async with gateway.http.options(gateway.files()) as response:
        assert response.status == 204
        assert response.headers["Tus-Version"] == "1.0.0"
        assert response.headers["Tus-Resumable"] == "1.0.0"
        extensions = response.headers["Tus-Extension"].split(",")
        assert {"creation", "creation-defer-length", "expiration", "termination", "presigned-parts",
                "creation-with-upload", "checksum", "concatenation"} <= set(extensions)
        assert int(response.headers["Tus-Max-Size"]) == gateway.settings.max_upload_size


async def test_cors_preflight_and_exposed_headers(gateway: Gateway) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "tus-resumable, upload-length, authorization"}
    async with gateway.http.options(gateway.files(), headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
        assert "Upload-Length" in response.headers["Access-Control-Allow-Headers"]
    async with gateway.http.post(gateway.files(), headers={**auth(), "Upload-Length": "5",
                                                           "Origin": "https://app.example"}) as response:
        exposed = response.headers["Access-Control-Expose-Headers"]
        for name in ("Location", "Upload-Offset", "Upload-Expires", "Upload-Part-Size", "Tus-Resumable"):
            assert name in exposed
    async with gateway.http.options(gateway.files(), headers={**preflight, "Origin": "https://evil.example"}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0"])
async def test_missing_or_unsupported_version_is_412(gateway: Gateway, version: str | None) -> None:
    headers = {"Authorization": f"Bearer {token()}", "Upload-Length": "10"}
    if version:
        headers["Tus-Resumable"] = version
    async with gateway.http.post(gateway.files(), headers=headers) as response:
        assert response.status == 412
        assert response.headers["Tus-Version"] == "1.0.0"
        assert (await error_of(response))["code"] == "unsupported_version"


async def test_create_makes_row_and_multipart_upload(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    metadata = f"filename {b64('../../etc/passwd report.pdf')},filetype {b64('application/pdf')},flag"
    async with gateway.http.post(gateway.files(), headers={**auth(), "Upload-Length": str(20 * MiB),
                                                           "Upload-Metadata": metadata}) as response:
        assert response.status == 201
        location = response.headers["Location"]
        assert response.headers["Upload-Offset"] == "0"
        assert int(response.headers["Upload-Part-Size"]) == gateway.settings.part_size
        expires = parsedate_to_datetime(response.headers["Upload-Expires"])
    uid = upload_id(location)
    assert location == gateway.files(f"/{uid}")
    assert len(uid) >= 22 and uid.startswith("00")
    row = await upload_row(db, uid)
    assert row["state"] == "active" and row["owner_sub"] == "alice" and row["owner_iss"] == "https://issuer.test"
    assert row["length"] == 20 * MiB and row["prefix_parts"] == 0
    assert abs((row["expires_at"] - expires).total_seconds()) < 1
    # The key comes from the id, never from the filename.
    assert row["s3_key"].endswith(uid) and "passwd" not in row["s3_key"]
    pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=gateway.settings.s3_bucket,
                                                                 Prefix=row["s3_key"])
    assert [u["UploadId"] for page in pages for u in page.get("Uploads", [])] == [row["multipart_id"]]


async def test_head_reports_upload(gateway: Gateway) -> None:
    metadata = f"filename {b64('naïve.txt')},empty"
    location = await gateway.create(1234, **{"Upload-Metadata": metadata})
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.status == 200
        assert response.headers["Upload-Offset"] == "0"
        assert response.headers["Upload-Length"] == "1234"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Upload-Metadata"] == metadata
        assert "Upload-Expires" in response.headers and "Upload-Part-Size" in response.headers
        assert "Upload-Defer-Length" not in response.headers


async def test_deferred_length(gateway: Gateway) -> None:
    location = await gateway.create(None)
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.headers["Upload-Defer-Length"] == "1"
        assert "Upload-Length" not in response.headers
        assert int(response.headers["Upload-Part-Size"]) >= 64 * MiB


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 400, "invalid_upload_length"),
    ({"Upload-Length": "10", "Upload-Defer-Length": "1"}, 400, "ambiguous_upload_length"),
    ({"Upload-Defer-Length": "2"}, 400, "invalid_upload_length"),
    ({"Upload-Length": "-1"}, 400, "invalid_upload_length"),
    ({"Upload-Length": "12abc"}, 400, "invalid_upload_length"),
    ({"Upload-Length": "99999999999999999999999"}, 400, "invalid_upload_length"),
    ({"Upload-Length": str(51 * 1024**3)}, 413, "max_size_exceeded"),
    ({"Upload-Length": "10", "Upload-Concat": "partially"}, 400, "invalid_concat"),
    ({"Upload-Length": "10", "Upload-Metadata": "filename not*base64"}, 400, "invalid_metadata"),
    ({"Upload-Length": "10", "Upload-Metadata": "a YQ==,a YQ=="}, 400, "invalid_metadata"),
    ({"Upload-Length": "10", "Upload-Metadata": "k\u00e9y YQ=="}, 400, "invalid_metadata"),
    ({"Upload-Length": "10", "Upload-Metadata": "key YQ"}, 400, "invalid_metadata"),
    ({"Upload-Length": "10", "Upload-Metadata": "a YQ== extra"}, 400, "invalid_metadata"),
    ({"Upload-Length": "10", "Upload-Metadata": ",".join(f"k{i} YQ==" for i in range(33))}, 400, "invalid_metadata"),
    ({"Upload-Length": "10", "Upload-Part-Size": "1024"}, 400, "invalid_part_size"),
    ({"Upload-Length": "10", "Upload-Part-Checksum": "crc64"}, 400, "invalid_checksum_algorithm"),
])
async def test_bad_creation_requests(gateway: Gateway, db, headers: dict, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    before = await db.fetchval("select count(*) from uploads")
    async with gateway.http.post(gateway.files(), headers={**auth("bad-creator"), **headers}) as response:
        assert response.status == status
        assert (await error_of(response))["code"] == code
    assert await db.fetchval("select count(*) from uploads") == before


async def test_zero_length_upload_completes_at_once(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(0)
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.status == 200
        assert response.headers["Upload-Offset"] == "0" and response.headers["Upload-Length"] == "0"
    row = await upload_row(db, upload_id(location))
    assert row["state"] == "completed" and row["multipart_id"] is None
    head = s3.head_object(Bucket=gateway.settings.s3_bucket, Key=row["s3_key"])
    assert head["ContentLength"] == 0 and head["Metadata"]["upload-id"] == upload_id(location)


async def test_part_size_plan(gateway: Gateway) -> None:
    async def part_size(length: int, **headers: str) -> int:
        async with gateway.http.post(gateway.files(), headers={**auth(), "Upload-Length": str(length),
                                                               **headers}) as response:
            assert response.status == 201
            return int(response.headers["Upload-Part-Size"])

    assert await part_size(100 * MiB) == 16 * MiB
    assert await part_size(2 * 1024 * MiB) == 64 * MiB  # large files default to >= 64 MiB parts
    assert await part_size(100 * MiB, **{"Upload-Part-Size": str(8 * MiB)}) == 8 * MiB
    # Never more than 10,000 parts: a hint too small for the length is raised.
    assert await part_size(49 * 1024 * MiB, **{"Upload-Part-Size": str(5 * MiB)}) == 6 * MiB


async def test_terminate(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(10 * MiB)
    row = await upload_row(db, upload_id(location))
    async with gateway.http.delete(location, headers=auth()) as response:
        assert response.status == 204
    assert (await upload_row(db, upload_id(location)))["state"] == "terminated"
    with pytest.raises(ClientError) as caught:
        s3.list_parts(Bucket=gateway.settings.s3_bucket, Key=row["s3_key"], UploadId=row["multipart_id"])
    assert caught.value.response["Error"]["Code"] == "NoSuchUpload"
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.status == 410
        assert "Upload-Offset" not in response.headers
    async with gateway.http.delete(location, headers=auth()) as response:
        assert response.status == 204  # a retried DELETE after a lost response


async def test_delete_completed_upload_removes_object(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(0)
    key = (await upload_row(db, upload_id(location)))["s3_key"]
    async with gateway.http.delete(location, headers=auth()) as response:
        assert response.status == 204
    with pytest.raises(ClientError):
        s3.head_object(Bucket=gateway.settings.s3_bucket, Key=key)


async def test_method_override_on_post(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(100)
    async with gateway.http.post(location, headers={**auth(), "X-HTTP-Method-Override": "HEAD"}) as response:
        assert response.status == 200 and response.headers["Upload-Offset"] == "0"
    async with gateway.http.post(location, headers={**auth(), "X-HTTP-Method-Override": "DELETE"}) as response:
        assert response.status == 204
    assert (await upload_row(db, upload_id(location)))["state"] == "terminated"


async def test_unknown_upload_is_404(gateway: Gateway) -> None:
    async with gateway.http.head(gateway.files("/00AAAAAAAAAAAAAAAAAAAAAAAA"), headers=auth()) as response:
        assert response.status == 404
        assert "Upload-Offset" not in response.headers


async def test_another_owner_sees_404(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(100, subject="alice")
    async with gateway.http.head(location, headers=auth("mallory")) as response:
        assert response.status == 404
    async with gateway.http.delete(location, headers=auth("mallory")) as response:
        assert response.status == 404
    assert (await upload_row(db, upload_id(location)))["state"] == "active"


def _none_alg_token() -> str:
    return unsigned(claims(omit=("iat",), exp=9999999999), {"alg": "none", "typ": "JWT"})


@pytest.mark.parametrize("authorization", [
    None,
    "Basic YWxpY2U6c2VjcmV0",
    "Bearer not-a-jwt",
    f"Bearer {token(secret='wrong-secret-' + 'y' * 40)}",
    f"Bearer {token(ttl=-300)}",
    f"Bearer {token(audience='another-service')}",
    f"Bearer {token(issuer='https://evil.test')}",
    f"Bearer {_none_alg_token()}",
])
async def test_bad_tokens_are_401(gateway: Gateway, authorization: str | None) -> None:
    headers = {**TUS, "Upload-Length": "10"}
    if authorization:
        headers["Authorization"] = authorization
    async with gateway.http.post(gateway.files(), headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await error_of(response))["code"] == "unauthorized"


async def test_token_without_exp_is_refused(gateway: Gateway) -> None:
    no_exp = token(omit=("iat", "exp"))
    async with gateway.http.post(gateway.files(), headers={**TUS, "Upload-Length": "1",
                                                           "Authorization": f"Bearer {no_exp}"}) as response:
        assert response.status == 401


async def test_health_endpoints(gateway: Gateway) -> None:
    async with gateway.http.get(f"{gateway.url}/healthz") as response:
        assert response.status == 200
    async with gateway.http.get(f"{gateway.url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"


async def test_readyz_reports_unreachable_s3(stack) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(stack, s3_endpoint_url="http://127.0.0.1:9")
    async for gw in start_gateway(settings):
        async with gw.http.get(f"{gw.url}/readyz") as response:
            assert response.status == 503
            assert "s3" in (await response.json())["failing"]


async def test_public_url_builds_location(stack) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(stack, public_url="https://uploads.example.com")
    async for gw in start_gateway(settings):
        location = await gw.create(10)
        assert location.startswith("https://uploads.example.com/files/00")


async def test_errors_are_json_for_unknown_routes_and_methods(gateway: Gateway) -> None:
    async with gateway.http.get(f"{gateway.url}/nope", headers=auth()) as response:
        assert response.status == 404
        assert (await error_of(response))["code"] == "not_found"
    async with gateway.http.put(gateway.files(), headers=auth()) as response:
        assert response.status == 405
        assert (await error_of(response))["code"] == "method_not_allowed"
