"""Real PostgreSQL and real SeaweedFS, started once per test session on free ports.

Set GATEWAY_TEST_DATABASE_URL and GATEWAY_TEST_S3_ENDPOINT_URL (+ _BUCKET, _ACCESS_KEY_ID,
_SECRET_ACCESS_KEY, _REGION) to run against existing servers instead.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import botocore.session
import jwt
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from botocore.config import Config

from gateway.app import create_app
from gateway.config import Settings
from gateway.db.migrate import migrate
from gateway.embedded import EmbeddedStack, StackInfo

SECRET = "test-secret-" + "x" * 40
AUDIENCE = "gateway-tests"
ISSUER = "https://issuer.test"
TUS = {"Tus-Resumable": "1.0.0"}


def _stack_from_env() -> StackInfo | None:
    env = os.environ
    if not env.get("GATEWAY_TEST_DATABASE_URL") or not env.get("GATEWAY_TEST_S3_ENDPOINT_URL"):
        return None
    return StackInfo(
        database_url=env["GATEWAY_TEST_DATABASE_URL"], s3_endpoint_url=env["GATEWAY_TEST_S3_ENDPOINT_URL"],
        s3_region=env.get("GATEWAY_TEST_S3_REGION", "us-east-1"),
        s3_access_key_id=env["GATEWAY_TEST_S3_ACCESS_KEY_ID"],
        s3_secret_access_key=env["GATEWAY_TEST_S3_SECRET_ACCESS_KEY"],
        s3_bucket=env.get("GATEWAY_TEST_S3_BUCKET", "uploads"),
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[StackInfo]:
    existing = _stack_from_env()
    if existing is not None:
        asyncio.run(migrate(existing.database_url))
        yield existing
        return
    with tempfile.TemporaryDirectory(prefix="gateway-test-") as data_dir:
        with EmbeddedStack(Path(data_dir), bucket="uploads", cors_origins=("*",)) as info:
            asyncio.run(migrate(info.database_url))
            yield info


@pytest.fixture(scope="session")
def s3(stack: StackInfo) -> Any:
    """A plain botocore client to look at what S3 really holds."""
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=stack.s3_endpoint_url, region_name=stack.s3_region,
        aws_access_key_id=stack.s3_access_key_id, aws_secret_access_key=stack.s3_secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


def make_settings(stack: StackInfo, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        database_url=stack.database_url, s3_endpoint_url=stack.s3_endpoint_url, s3_bucket=stack.s3_bucket,
        s3_region=stack.s3_region, s3_access_key_id=stack.s3_access_key_id,
        s3_secret_access_key=stack.s3_secret_access_key, s3_key_prefix=f"test-{uuid.uuid4().hex[:8]}",
        jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER, cors_origins=("https://app.example",),
        db_pool_min=1, db_pool_max=10, max_upload_size=50 * 1024**3,
    )
    values.update(overrides)
    return Settings(**values)


def token(subject: str = "alice", *, issuer: str = ISSUER, audience: str = AUDIENCE, ttl: int = 600,
          secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": subject, "iss": issuer, "aud": audience, "iat": now, "exp": now + ttl, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def auth(subject: str = "alice", **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(subject)}", **TUS, **extra}


@dataclass
class Gateway:
    url: str
    settings: Settings
    http: ClientSession
    app: web.Application

    def files(self, path: str = "") -> str:
        return f"{self.url}{self.settings.base_path}{path}"

    async def create(self, length: int | None, subject: str = "alice", **headers: str) -> str:
        extra = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
        async with self.http.post(self.files(), headers={**auth(subject), **extra, **headers}) as response:
            assert response.status == 201, await response.text()
            return response.headers["Location"]


async def start_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with ClientSession() as http:
        yield Gateway(str(server.make_url("")).rstrip("/"), settings, http, app)
    await server.close()


@pytest.fixture
async def gateway(stack: StackInfo) -> AsyncIterator[Gateway]:
    async for gw in start_gateway(make_settings(stack)):
        yield gw


@pytest.fixture
async def db(stack: StackInfo) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.database_url)
    yield conn
    await conn.close()


def upload_id(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]
