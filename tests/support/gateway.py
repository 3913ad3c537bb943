"""An in-process gateway for the tests: settings against the test stack, a server and a client session."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import Settings
from gateway.embedded import StackInfo
from gateway.http.connections import guarded_runner
from tests.support.tokens import AUDIENCE, ISSUER, SECRET, auth


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


class GatewayTestServer(TestServer):
    """aiohttp's TestServer on the runner `gateway serve` uses: its header timeout, keep-alive timeout
    and connection limit. `handler_cancellation=False` is what `serve` does (a handler keeps running when
    its client goes away); aiohttp's test server cancels it."""

    def __init__(self, app: web.Application, settings: Settings, *, handler_cancellation: bool = True) -> None:
        super().__init__(app, host="127.0.0.1")
        self.settings = settings
        self.handler_cancellation = handler_cancellation

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs["handler_cancellation"] = self.handler_cancellation
        return guarded_runner(self.app, self.settings, **kwargs)


# pytest-aiohttp's `aiohttp_client` fixture: a coroutine taking a test server, answering a TestClient.
AiohttpClient = Callable[..., Awaitable[TestClient]]


async def client_gateway(aiohttp_client: AiohttpClient, settings: Settings) -> Gateway:
    """The app factory under pytest-aiohttp's `aiohttp_client` (the fixture closes it after the test), on the
    runner `gateway serve` uses. For tests that need more than one gateway at a time: `running`."""
    client = await aiohttp_client(GatewayTestServer(create_app(settings), settings))
    return Gateway(str(client.make_url("")).rstrip("/"), settings, client.session, client.app)


async def start_gateway(settings: Settings, *, handler_cancellation: bool = True) -> AsyncIterator[Gateway]:
    app = create_app(settings)
    server = GatewayTestServer(app, settings, handler_cancellation=handler_cancellation)
    await server.start_server()
    async with ClientSession() as http:
        yield Gateway(str(server.make_url("")).rstrip("/"), settings, http, app)
    await server.close()


@contextlib.asynccontextmanager
async def running(settings: Settings, **options: Any) -> AsyncIterator[Gateway]:
    """`start_gateway` as an async context manager (for tests that run several gateways at once)."""
    instance = start_gateway(settings, **options)
    gw = await anext(instance)
    try:
        yield gw
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(instance)  # start_gateway's own cleanup: close the server


def upload_id(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]
