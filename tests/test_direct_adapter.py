"""clients/js (the DirectHttpStack for tus-js-client 4) in Node, against a real gateway and SeaweedFS.

tests/browser/adapter_node.mjs runs tus-js-client with the adapter; the gateway sits behind a counting
TCP proxy and S3 behind a counting HTTP proxy (the presigned URLs name it through
`s3_public_endpoint_url`; SigV4 signs the Host header, which the proxy passes on unchanged). So the
tests see where the bytes went: the file's bytes into S3, only headers and JSON into the gateway.
The S3 proxy can also refuse one part with 403, as S3 does with an expired URL.

tests/browser/node_modules is installed from tests/browser/package-lock.json by the session fixture
`browser_packages` (tests/test_browser.py shares `install_browser_packages`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.embedded import StackInfo
from tests.conftest import Gateway, make_settings, start_gateway, token, upload_id
from tests.direct import MiB, stored_sha256
from tests.node import node_requirement, npm_ci, run_script, write_file

BROWSER_DIR = Path(__file__).parent / "browser"
NODE_TIMEOUT = 180.0
PART = 5 * MiB
SIZE = 23 * MiB + 12_345  # 5 parts: four of 5 MiB and a short last one


needs_node = node_requirement("the JS adapter tests")
pytestmark = needs_node


@functools.cache
def install_browser_packages() -> Path:
    """tests/browser/node_modules, pinned; playwright-core never downloads a browser by itself."""
    return npm_ci(BROWSER_DIR, ("tus-js-client", "playwright-core"))


@pytest.fixture(scope="session")
def browser_packages() -> Path:
    return install_browser_packages()


async def run_node(script: str, options: dict[str, Any], timeout: float = NODE_TIMEOUT) -> dict[str, Any]:
    """Run a tests/browser script with JSON options; its last stdout line is the JSON result."""
    return await run_script(BROWSER_DIR, script, options, timeout)


# -- proxies that count bytes -----------------------------------------------------------------------


class CountingTcpProxy:
    """A plain TCP relay: `upstream` counts every byte clients sent to the target (headers and bodies)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.upstream = 0
        self.downstream = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if up:
                        self.upstream += len(data)
                    else:
                        self.downstream += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(pump(reader, target_writer, True), pump(target_reader, writer, False))
        finally:
            self._tasks.discard(task)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
               "proxy-connection"}


@dataclass
class CountingS3Proxy:
    """An HTTP relay in front of S3 that counts PUT body bytes and can refuse chosen part PUTs with 403."""

    target: str
    put_bytes: int = 0
    puts: int = 0
    refused: list[int] = field(default_factory=list)
    refuse_once: set[int] = field(default_factory=set)  # part numbers whose first PUT gets 403
    server: TestServer | None = None
    session: ClientSession | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        if request.method == "PUT":
            self.puts += 1
            self.put_bytes += len(body)
            number = int(request.query.get("partNumber", "0"))
            if number in self.refuse_once:
                self.refuse_once.discard(number)
                self.refused.append(number)
                return web.Response(status=403, content_type="application/xml", text=(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>"
                    "<Message>Request has expired</Message></Error>"))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        target = URL(self.target + request.raw_path, encoded=True)
        async with self.session.request(request.method, target, headers=headers, data=body or None,
                                        allow_redirects=False) as answer:
            data = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=answer.status, body=data, headers=out)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.session = ClientSession(auto_decompress=False, timeout=ClientTimeout(total=120),
                                     skip_auto_headers=("User-Agent", "Accept-Encoding"))
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        if self.session is not None:
            await self.session.close()


@dataclass
class Setup:
    gateway: Gateway
    proxy: CountingTcpProxy
    s3_proxy: CountingS3Proxy

    @property
    def endpoint(self) -> str:
        return f"{self.proxy.url}{self.gateway.settings.base_path}"


@contextlib.asynccontextmanager
async def proxied_gateway(stack: StackInfo, **overrides: Any) -> AsyncIterator[Setup]:
    s3_proxy = CountingS3Proxy(stack.s3_endpoint_url)
    await s3_proxy.start()
    try:
        settings = make_settings(stack, part_size=PART, s3_public_endpoint_url=s3_proxy.url, **overrides)
        gateways = start_gateway(settings)
        gw = await anext(gateways)
        try:
            port = URL(gw.url).port
            assert port is not None
            proxy = CountingTcpProxy("127.0.0.1", port)
            await proxy.start()
            try:
                yield Setup(gw, proxy, s3_proxy)
            finally:
                await proxy.close()
        finally:
            with contextlib.suppress(StopAsyncIteration):
                await anext(gateways)  # start_gateway's own cleanup: close the server
    finally:
        await s3_proxy.close()


def assert_bytes_went_to_s3(setup: Setup, size: int, result: dict[str, Any]) -> None:
    # Only headers and small JSON went to the gateway: far less than one part, let alone the file.
    assert setup.proxy.upstream > 0
    assert setup.proxy.upstream < min(size // 50, 256 * 1024), (setup.proxy.upstream, result)
    # ... while S3 received every byte (more when a part was sent again).
    assert setup.s3_proxy.put_bytes >= size, (setup.s3_proxy.put_bytes, size)


# -- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk_size", "source"), [(None, "stream"), (3 * MiB, "buffer")],
                         ids=["chunk-infinity-file-stream", "chunk-3MiB-buffer"])
async def test_tus_js_client_uploads_straight_to_s3(stack: StackInfo, db: Any, s3: Any, tmp_path: Path,
                                                    browser_packages: Path, chunk_size: int | None,
                                                    source: str) -> None:
    path = tmp_path / "big.bin"
    digest = write_file(path, SIZE)
    async with proxied_gateway(stack) as setup:
        result = await run_node("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": chunk_size, "parallel": 4, "input": source})
        assert await stored_sha256(db, s3, result["url"]) == digest
        assert_bytes_went_to_s3(setup, SIZE, result)
        assert result["events"]["part"] == 5, result
        assert result["events"]["forward"] == 0 and result["events"]["error"] == 0, result
        assert result["progressMax"] == SIZE
        sizes = await db.fetch("select size from upload_parts where upload_id = $1 order by number",
                               upload_id(result["url"]))
        assert [r["size"] for r in sizes] == [PART] * 4 + [SIZE - 4 * PART]


async def test_expired_url_is_signed_again(stack: StackInfo, db: Any, s3: Any, tmp_path: Path,
                                           browser_packages: Path) -> None:
    """S3 refuses part 3 once with 403 (as for an expired URL): the adapter re-signs and PUTs it again."""
    path = tmp_path / "big.bin"
    digest = write_file(path, SIZE)
    async with proxied_gateway(stack) as setup:
        setup.s3_proxy.refuse_once = {3}
        result = await run_node("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": None, "parallel": 2, "input": "stream"})
        assert setup.s3_proxy.refused == [3]
        assert result["events"]["resign"] == 1, result
        assert result["events"]["error"] == 0, result  # tus-js-client never saw a failure
        assert await stored_sha256(db, s3, result["url"]) == digest
        assert_bytes_went_to_s3(setup, SIZE, result)


async def test_abort_and_resume_from_the_servers_offset(stack: StackInfo, db: Any, s3: Any, tmp_path: Path,
                                                        browser_packages: Path) -> None:
    path = tmp_path / "big.bin"
    digest = write_file(path, SIZE)
    async with proxied_gateway(stack) as setup:
        result = await run_node("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": None, "parallel": 1, "input": "stream", "abortAtBytes": PART})
        # The second tus.Upload asked HEAD and went on from a part boundary past 0.
        assert result["resumedFrom"] is not None and 0 < result["resumedFrom"] < SIZE, result
        assert result["resumedFrom"] % PART == 0, result
        assert await stored_sha256(db, s3, result["url"]) == digest
        assert_bytes_went_to_s3(setup, SIZE, result)


@pytest.mark.parametrize(("size", "source", "chunk_size"), [(12 * MiB + 7, "readable", 3 * MiB),
                                                        (10 * MiB, "late-end", 5 * MiB)],
                         ids=["odd-length-stream", "empty-final-patch-on-a-part-boundary"])
async def test_deferred_length(stack: StackInfo, db: Any, s3: Any, tmp_path: Path, browser_packages: Path,
                               size: int, source: str, chunk_size: int) -> None:
    """Upload-Defer-Length with sources of unknown size (5 MiB parts by the creation hint).

    The length reaches the gateway with the sign request of the last part; or, when the data ends on a
    part boundary and tus-js-client declares the length in a final PATCH without a body, that PATCH goes
    to the gateway as is (nothing is left to sign). (tus-js-client 4.3.1's Node StreamSource hangs when
    a stream ends exactly on a chunk boundary, hence the odd size with the real stream.)
    """
    path = tmp_path / "stream.bin"
    digest = write_file(path, size)
    async with proxied_gateway(stack) as setup:
        result = await run_node("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": chunk_size, "parallel": 2, "input": source, "deferred": True, "partSize": PART})
        assert await stored_sha256(db, s3, result["url"]) == digest
        assert_bytes_went_to_s3(setup, size, result)
        assert result["events"]["error"] == 0, result
        assert result["events"]["part"] == -(-size // PART), result
        assert result["events"]["forward"] == (1 if source == "late-end" else 0), result


async def test_crc32c_part_checksums_and_creation_with_upload(stack: StackInfo, db: Any, s3: Any, tmp_path: Path,
                                                               browser_packages: Path) -> None:
    """`checksum: 'crc32c'` asks for Upload-Part-Checksum at creation; S3 checks every part. The first
    chunk of creation-with-upload goes direct as well."""
    path = tmp_path / "sum.bin"
    size = 11 * MiB + 3
    digest = write_file(path, size)
    async with proxied_gateway(stack) as setup:
        result = await run_node("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": 6 * MiB, "parallel": 2, "input": "buffer", "checksum": "crc32c",
            "uploadDataDuringCreation": True})
        row = await db.fetchrow("select part_checksum from uploads where id = $1", upload_id(result["url"]))
        assert row["part_checksum"] == "crc32c"
        assert await stored_sha256(db, s3, result["url"]) == digest
        assert_bytes_went_to_s3(setup, size, result)
        assert result["events"]["error"] == 0, result
