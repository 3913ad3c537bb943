"""Proxies the tests put between a client and a server, to see and to break what goes across.

`TcpProxy` relays TCP to a target (the gateway): it counts bytes each way, records the head of every
HTTP request, and with `cut_after` (or several `cut_at` points) aborts both sides of the connection in use
once that many client->server bytes went across (bench/drops.py uses it too).

`S3Proxy` is an HTTP relay in front of S3 that passes every request on unchanged (Host kept, so SigV4
signatures hold), counts PUT bodies, and injects S3's own faults: a 403 for chosen part PUTs (as for an
expired URL) and a 200 with an <Error> body for CompleteMultipartUpload (as AWS documents it may).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, web
from aiohttp.test_utils import TestServer
from yarl import URL

# -- TCP --------------------------------------------------------------------------------------------------

METHODS = (b"POST", b"PATCH", b"HEAD", b"DELETE", b"OPTIONS", b"GET", b"PUT")


@dataclass
class RequestHead:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


def parse_head(data: bytes) -> RequestHead | None:
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    try:
        method, path, _ = lines[0].split(" ", 2)
    except ValueError:  # not a request line after all
        return None
    fields = (line.partition(":") for line in lines[1:])
    return RequestHead(method, path, {name.strip().lower(): value.strip() for name, _, value in fields})


class TcpProxy:
    """A TCP relay to `target` (`("127.0.0.1", target_port)`; it may be changed before clients connect).

    `upstream`/`downstream` count the bytes relayed client->server and server->client, `connections`
    the connections accepted, `heads` the head of every request (a request starts with a fresh read).
    With `cut_after`, once that many bytes went upstream it awaits `before_cut(proxy)` and aborts both
    sides of that connection (`cuts` counts it); later connections are relayed in full. `cut_at` gives
    several such points (bytes upstream over all connections). `head_bytes` counts the bytes of request
    heads. Use `async with TcpProxy(...)` or `start()`/`close()`."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, cut_after: int | None = None,
                 cut_at: Sequence[int] = (),
                 before_cut: Callable[[TcpProxy], Awaitable[None]] | None = None) -> None:
        self.target = (target_host, target_port)
        self.cut_at = sorted(cut_at) if cut_after is None else [cut_after]
        self.before_cut = before_cut
        self.upstream = 0
        self.downstream = 0
        self.connections = 0
        self.cuts = 0
        self.head_bytes = 0
        self.heads: list[RequestHead] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method: str) -> list[RequestHead]:
        return [head for head in self.heads if head.method == method]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(client_reader, client_writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return

        def cut() -> None:
            self.cuts += 1
            client_writer.transport.abort()
            server_writer.transport.abort()

        async def upstream() -> None:
            while data := await client_reader.read(256 * 1024):
                if data[:16].split(b" ", 1)[0] in METHODS and (head := parse_head(data)) is not None:
                    self.heads.append(head)
                    if (end := data.find(b"\r\n\r\n")) >= 0:
                        self.head_bytes += end + 4
                if self.cuts < len(self.cut_at) and self.upstream + len(data) >= self.cut_at[self.cuts]:
                    keep = self.cut_at[self.cuts] - self.upstream
                    server_writer.write(data[:keep])
                    await server_writer.drain()
                    self.upstream += keep
                    if self.before_cut is not None:
                        await asyncio.wait_for(self.before_cut(self), 30)
                    cut()
                    return
                self.upstream += len(data)
                server_writer.write(data)
                await server_writer.drain()
            if server_writer.can_write_eof():
                server_writer.write_eof()

        async def downstream() -> None:
            while data := await server_reader.read(256 * 1024):
                self.downstream += len(data)
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            pass
        finally:
            client_writer.transport.abort()
            server_writer.transport.abort()


# -- S3 (HTTP) ----------------------------------------------------------------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
               "proxy-connection"}

ERROR_IN_200 = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                b"<Message>We encountered an internal error. Please try again.</Message></Error>")
EXPIRED = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
           "<Message>Request has expired</Message></Error>")
NOT_IMPLEMENTED = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
                   "<Message>A header or query you provided implies functionality that is not implemented."
                   "</Message></Error>")


@dataclass
class S3Proxy:
    """An HTTP relay in front of the S3 at `target`.

    Counts PUTs and their body bytes; the first PUT of each part number in `refuse_once` gets 403
    (recorded in `refused`); the next `complete_faults` CompleteMultipartUploads get 200 with an <Error>
    body (`completes` counts every CompleteMultipartUpload that arrived). With `multi_delete=False` it
    answers DeleteObjects as a server without it does (GCS's XML API): 501 NotImplemented."""

    target: str
    put_bytes: int = 0
    puts: int = 0
    refused: list[int] = field(default_factory=list)
    refuse_once: set[int] = field(default_factory=set)  # part numbers whose first PUT gets 403
    completes: int = 0
    complete_faults: int = 0
    multi_delete: bool = True
    deletes: int = 0  # single-object DELETEs relayed
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
                return web.Response(status=403, content_type="application/xml", text=EXPIRED)
        if request.method == "POST" and "delete" in request.query and not self.multi_delete:
            return web.Response(status=501, content_type="application/xml", text=NOT_IMPLEMENTED)
        if request.method == "DELETE" and "uploadId" not in request.query:
            self.deletes += 1
        if request.method == "POST" and "uploadId" in request.query:  # CompleteMultipartUpload
            self.completes += 1
            if self.complete_faults:
                self.complete_faults -= 1
                return web.Response(status=200, body=ERROR_IN_200, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        target = URL(self.target + request.raw_path, encoded=True)
        async with self.session.request(request.method, target, headers=headers, data=body or None,
                                        allow_redirects=False) as answer:
            data = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=answer.status, body=data, headers=out)

    async def start(self) -> None:
        app = web.Application(client_max_size=1024**3)
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

    async def __aenter__(self) -> S3Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
