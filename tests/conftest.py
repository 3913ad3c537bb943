"""Real PostgreSQL and real SeaweedFS, started once per test session on free ports.

Set GATEWAY_TEST_DATABASE_URL and GATEWAY_TEST_S3_ENDPOINT_URL (+ _BUCKET, _ACCESS_KEY_ID,
_SECRET_ACCESS_KEY, _REGION) to run against existing servers instead.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import botocore.session
import pytest
from botocore.config import Config

from gateway.db.migrate import migrate
from gateway.embedded import EmbeddedStack, StackInfo
from tests.support.gateway import AiohttpClient, Gateway, client_gateway, make_settings
from tests.support.js import install_browser_packages, install_js_packages


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
    with (
        tempfile.TemporaryDirectory(prefix="gateway-test-") as data_dir,
        EmbeddedStack(Path(data_dir), bucket="uploads", cors_origins=("*",)) as info,
    ):
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


@pytest.fixture
async def gateway(stack: StackInfo, aiohttp_client: AiohttpClient) -> Gateway:
    return await client_gateway(aiohttp_client, make_settings(stack))


@pytest.fixture
async def db(stack: StackInfo) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def js_packages() -> Path:
    """tests/js/node_modules (tus-js-client, Uppy), installed once with `npm ci`."""
    return install_js_packages()


@pytest.fixture(scope="session")
def browser_packages() -> Path:
    """tests/browser/node_modules (tus-js-client, playwright-core), installed once with `npm ci`."""
    return install_browser_packages()
