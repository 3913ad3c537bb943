"""A real gateway in a background thread with its own event loop, and a synchronous raw HTTP client.

For tests that cannot use async fixtures (hypothesis): `ThreadedGateway(settings)` is a context manager
that builds `gateway.app.create_app(settings)`, serves it with aiohttp's AppRunner/TCPSite on
127.0.0.1:<free port> and stops it cleanly. `gw.run(coro)` runs a coroutine on the gateway's loop (for
example asyncpg queries on `gw.db`, a connection opened on that loop) and returns its result.

`request()` sends one request with `http.client` on a fresh connection, so header values reach the
server exactly as given (latin-1 encoded), nothing is normalised or added besides Host and, with a
body, Content-Length.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings
from tests.support.db import upload_row

T = TypeVar("T")


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def request(base_url: str, method: str, path: str, headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
            body: bytes | None = None, timeout: float = 30.0) -> Reply:
    """One request on a new connection; `path` goes on the request line as is (already %-encoded)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.getheaders()]
        return Reply(response.status, list(response.getheaders()), data, raw)
    finally:
        conn.close()


class ThreadedGateway:
    def __init__(self, settings: Settings, *, database_url: str | None = None) -> None:
        self.settings = settings
        self.database_url = database_url or settings.database_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="threaded-gateway", daemon=True)
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.db: asyncpg.Connection | None = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to the starting thread
            self.failure = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.app = create_app(self.settings)
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.db = await asyncpg.connect(self.database_url)

    async def _stop(self) -> None:
        if self.db is not None:
            await self.db.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def __enter__(self) -> ThreadedGateway:
        self.thread.start()
        if not self.ready.wait(60):
            raise RuntimeError("the threaded gateway did not start within 60 s")
        if self.failure is not None:
            self.thread.join(5)
            self.loop.close()
            raise RuntimeError("the threaded gateway failed to start") from self.failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self._stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            if not self.loop.is_running():
                self.loop.close()

    # -- helpers --------------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, method: str, path: str, headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
                body: bytes | None = None, timeout: float = 30.0) -> Reply:
        return request(self.url, method, path, headers, body, timeout)

    def files(self, suffix: str = "") -> str:
        return f"{self.settings.base_path}{suffix}"

    def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        assert self.db is not None
        return self.run(self.db.fetch(query, *args))

    def fetchval(self, query: str, *args: Any) -> Any:
        assert self.db is not None
        return self.run(self.db.fetchval(query, *args))

    def upload_row(self, upload: str) -> asyncpg.Record | None:
        """`tests.support.db.upload_row` on the gateway's loop and connection."""
        assert self.db is not None
        return self.run(upload_row(self.db, upload))
