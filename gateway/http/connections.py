"""Connection limits of every listener `gateway serve` opens (docs/architecture.md §7.5).

aiohttp's server has a keep-alive timeout but nothing that bounds how long a request head may take, or
how many connections a process holds. `guarded_runner` is aiohttp's AppRunner with those limits:

- GATEWAY_HEADER_TIMEOUT: from the first byte of a request head, the whole head must arrive within this
  time, however slowly it trickles (slowloris); else the connection is closed without an answer.
- GATEWAY_KEEPALIVE_TIMEOUT: a connection with no request in progress (a fresh one that sends nothing, or
  one between requests) is closed after this long (aiohttp's own `keepalive_timeout`).
- GATEWAY_MAX_CONNECTIONS: a listener of a process holds at most this many connections; beyond it a new
  connection is closed as soon as it is accepted (before any byte is read or a task is created).
- A 408 (a JSON body that stalled, gateway/http/common.py) closes the connection as soon as it is written,
  instead of aiohttp's lingering read of the rest of a body that is not coming.
- A malformed request (aiohttp answers 400 and closes) is an info line, not aiohttp's ERROR traceback.

The hot path pays a few attribute checks per received chunk and a clock read per request head; a
connection creates at most one timer per header timeout, however many requests it carries
(GuardedRequestHandler keeps it lazy, as aiohttp does its keep-alive timer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.config import Settings
from gateway.metrics import CONNECTIONS_CLOSED

log = logging.getLogger(__name__)

# At most one "limit reached" warning per listener this often (a flood would write one per connection).
WARN_EVERY = 60.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.header_timeout, settings.keepalive_timeout, settings.max_connections)


class _Listener:
    """What the connections of one runner share: the limits and the count of open connections."""

    def __init__(self, limits: ConnectionLimits, name: str) -> None:
        self.limits = limits
        self.name = name
        self.open = 0
        self.warned_at = -WARN_EVERY

    def refuse(self) -> None:
        CONNECTIONS_CLOSED.labels("max_connections").inc()
        now = time.monotonic()
        if now - self.warned_at >= WARN_EVERY:
            self.warned_at = now
            log.warning("connection limit reached on the %s listener (%d open, GATEWAY_MAX_CONNECTIONS): new "
                        "connections are closed at accept", self.name, self.open)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a header timeout and a place in the listener's count."""

    __slots__ = ("_body", "_counted", "_head_deadline", "_head_timer", "_listener")

    def __init__(self, manager: web.Server, listener: _Listener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._counted = False
        # When the head being received must be complete (None: no head in progress). The timer is lazy,
        # like aiohttp's keep-alive timer: a head that completes only clears the deadline, and a timer
        # that fires before the current deadline re-arms itself, so a busy keep-alive connection creates
        # at most one timer per header timeout instead of one per request.
        self._head_deadline: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        # The body of the last request whose head was parsed: bytes arriving while it is unfinished are
        # body bytes, afterwards they start the next head.
        self._body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        if listener.open >= listener.limits.max_connections:
            listener.refuse()
            self._manager = None  # never registered: connection_lost has nothing to undo
            transport.close()
            return
        listener.open += 1
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._listener.open -= 1
        self._head_deadline = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is None and (self._body is None or self._body.is_eof()) and not self._upgraded:
            self._start_head_clock()
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads and self._messages:
            self._body = self._messages[-1][1]
            self._head_deadline = None

    def _start_head_clock(self) -> None:
        self._head_deadline = deadline = self._loop.time() + self._listener.limits.header_timeout
        if self._head_timer is None:
            self._head_timer = self._loop.call_at(deadline, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None or self.transport is None or self._force_close:
            return
        if self._loop.time() < deadline:  # armed for an earlier head
            self._head_timer = self._loop.call_at(deadline, self._head_timed_out)
            return
        if self._request_in_progress or self._buffer_paused:
            # A head pipelined behind a request still being answered, or reading paused by us: not the
            # client's delay; look again later.
            self._start_head_clock()
            return
        CONNECTIONS_CLOSED.labels("header_timeout").inc()
        log.debug("request head incomplete after %.1fs: closing the connection", self._listener.limits.header_timeout)
        self.force_close()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            # A malformed request (bad request line, CR in a header, oversized line): the client's error,
            # which aiohttp would log as an ERROR traceback, one per request anyone can send.
            CONNECTIONS_CLOSED.labels("malformed_request").inc()
            peer = self.peername
            address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else peer
            log.info("malformed request from %s: %d %s", address, exc.code, exc.message)
            return
        super().log_exception(*args, **kwargs)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if resp.status == 408:  # the body stalled: no lingering read of bytes that are not coming
            self.force_close()
        return result


class GuardedServer(web.Server):
    """aiohttp's protocol factory, making GuardedRequestHandlers."""

    def __init__(self, *args: Any, listener: _Listener, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listener = listener

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, self.listener, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, limits: ConnectionLimits, name: str, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self.listener = _Listener(limits, name)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app's startup, then aiohttp's own factory
        return GuardedServer(server.request_handler, request_factory=server.request_factory,
                             handler_cancellation=server.handler_cancellation, loop=asyncio.get_running_loop(),
                             listener=self.listener, **server._kwargs)


def guarded_runner(app: web.Application, settings: Settings, name: str = "api", **kwargs: Any) -> GuardedRunner:
    """The runner of a `gateway serve` listener (and of the tests' in-process gateways)."""
    options: dict[str, Any] = {"handle_signals": False, "access_log": None, "shutdown_timeout": 1, **kwargs}
    return GuardedRunner(app, ConnectionLimits.of(settings), name, **options)
