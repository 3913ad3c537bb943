"""The embedded dev/test stack: real PostgreSQL and SeaweedFS S3, as the gateway will use them."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from botocore.exceptions import ClientError

from gateway.embedded import HOST, EmbeddedSeaweed, EmbeddedStack, StackInfo, preflight, s3_client

ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def info(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with EmbeddedStack(tmp_path_factory.mktemp("stack"), cors_origins=[ORIGIN]) as info:
        yield info


def client(info: StackInfo) -> Any:
    return s3_client(info.s3_endpoint_url, info.s3_access_key_id, info.s3_secret_access_key)


def http(method: str, url: str, body: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method=method), timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


async def fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def test_postgres_accepts_asyncpg_with_password_only(info: StackInfo) -> None:
    assert asyncio.run(fetchval(info.database_url, "select 1")) == 1
    assert asyncio.run(fetchval(info.database_url, "select current_database()")) == "gateway"
    url = urlsplit(info.database_url)
    wrong = url._replace(netloc=f"{url.username}:wrong@{url.hostname}:{url.port}").geturl()
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(fetchval(wrong, "select 1"))


def test_s3_put_and_get(info: StackInfo) -> None:
    s3 = client(info)
    s3.put_object(Bucket=info.s3_bucket, Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket=info.s3_bucket, Key="a/b.txt")["Body"].read() == b"hello"


def test_anonymous_requests_are_refused(info: StackInfo) -> None:
    s3 = client(info)
    s3.put_object(Bucket=info.s3_bucket, Key="private", Body=b"secret")
    base = f"{info.s3_endpoint_url}/{info.s3_bucket}"
    assert http("GET", f"{base}/private") == 403
    assert http("GET", f"{base}?list-type=2") == 403
    assert http("PUT", f"{base}/anon", b"x") == 403
    with pytest.raises(ClientError):
        s3.head_object(Bucket=info.s3_bucket, Key="anon")


def test_presigned_put_enforces_signed_content_length(info: StackInfo) -> None:
    s3 = client(info)
    url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": info.s3_bucket, "Key": "presigned", "ContentLength": 5}, ExpiresIn=300
    )
    assert http("PUT", url, b"too long!") == 403
    assert http("PUT", url, b"hello") == 200
    assert s3.get_object(Bucket=info.s3_bucket, Key="presigned")["Body"].read() == b"hello"


def test_cors_preflight_allows_configured_origin_only(info: StackInfo) -> None:
    allowed = preflight(info.s3_endpoint_url, info.s3_bucket, ORIGIN)
    assert allowed.status == 200
    assert allowed.getheader("Access-Control-Allow-Origin") == ORIGIN
    assert "PUT" in (allowed.getheader("Access-Control-Allow-Methods") or "")
    assert "ETag" in (allowed.getheader("Access-Control-Expose-Headers") or "")
    other = preflight(info.s3_endpoint_url, info.s3_bucket, "http://evil.example")
    assert other.getheader("Access-Control-Allow-Origin") is None


def test_restart_reuses_data_and_credentials(tmp_path: Path) -> None:
    stack = EmbeddedStack(tmp_path)
    with stack as first:
        client(first).put_object(Bucket=first.s3_bucket, Key="kept", Body=b"still here")
        asyncio.run(fetchval(first.database_url, "create table kept as select 42 as answer"))
    with stack as second:
        assert (second.s3_access_key_id, second.s3_secret_access_key) == (
            first.s3_access_key_id, first.s3_secret_access_key
        )
        assert client(second).get_object(Bucket=second.s3_bucket, Key="kept")["Body"].read() == b"still here"
        assert asyncio.run(fetchval(second.database_url, "select answer from kept")) == 42


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        with pytest.raises(RuntimeError, match=r"(?s)seaweedfs exited.*weed\.log"):
            EmbeddedSeaweed(tmp_path, port=busy.getsockname()[1]).start()
