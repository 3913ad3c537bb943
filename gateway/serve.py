"""Running the app in a process, with a shutdown that lets uploads in flight finish.

On SIGTERM/SIGINT: mark the app draining (/readyz answers 503 `draining`, responses carry
`Connection: close`), stop listening on the API port, wait (up to the shutdown timeout) until no request
is being handled, then close. aiohttp's own graceful shutdown stops reading request bodies at once, which
would cut every PATCH streaming a part. The ops port (GATEWAY_METRICS_PORT: /metrics, /healthz, /readyz)
stays open until the drain is over. `gateway serve --workers N` runs this in each worker
(gateway/supervisor.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import time
from collections.abc import Callable

from aiohttp import web

from gateway.config import Settings
from gateway.http.connections import guarded_runner
from gateway.http.keys import DRAINING
from gateway.http.routes import IN_FLIGHT, ops_app
from gateway.metrics import WORKER_STARTED

log = logging.getLogger(__name__)


async def serve(app: web.Application, settings: Settings, *, on_ready: Callable[[], None] | None = None,
                parent_pid: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or until the supervising process `parent_pid` is gone)."""
    _check_open_files(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed first: a signal during start-up (pool, S3 client) shuts down cleanly once started.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Header timeout, keep-alive timeout and connection limit on both listeners, each with its own count:
    # a full API port leaves the probes and scrapes answering (gateway/http/connections.py).
    runner = guarded_runner(app, settings, "api")
    ops_runner = guarded_runner(ops_app(app), settings, "ops")
    watcher = None
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True)
        await site.start()
        if settings.metrics_port:
            await ops_runner.setup()
            # Every worker binds it too: in multi-process mode any worker's scrape covers all of them.
            await web.TCPSite(ops_runner, settings.host, settings.metrics_port, reuse_port=True).start()
        if parent_pid is not None:
            watcher = asyncio.create_task(_watch_parent(parent_pid, stop))
        if on_ready is not None:
            on_ready()
        _settle_garbage_collector()
        WORKER_STARTED.set(time.time())
        await stop.wait()
        app[DRAINING].set()
        log.info("shutting down (pid %d): draining, no new connections; waiting up to %.0fs for %d request(s) "
                 "in flight", os.getpid(), settings.shutdown_timeout, app[IN_FLIGHT].count)
        await site.stop()
        try:
            await asyncio.wait_for(app[IN_FLIGHT].idle.wait(), settings.shutdown_timeout)
        except TimeoutError:
            log.warning("shutdown timeout: cutting %d request(s)", app[IN_FLIGHT].count)
    finally:
        if watcher is not None:
            watcher.cancel()
        await ops_runner.cleanup()
        await runner.cleanup()


# A request allocates thousands of short-lived objects (a sign batch of 100 URLs, ~20,000), so with
# CPython's default gen-0 threshold (700) collections ran many times per request and scanned the whole
# young heap each time: about a fifth of a sign request's CPU. 10,000 keeps most of that gain; the
# older generations keep their pace (a 50,000 / 50 / 100 setting saved little more and let a process
# under 256 connections of sign requests grow from 128 to 227 MiB).
GC_THRESHOLDS = (10_000, 10, 10)


def _settle_garbage_collector() -> None:
    """Once started: what start-up allocated (modules, pools, clients) is never scanned again, and the
    young generation is collected every GC_THRESHOLDS[0] allocations instead of every 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _check_open_files(settings: Settings) -> None:
    """GATEWAY_MAX_CONNECTIONS only bounds anything below the process's open-files limit: past that,
    accept() fails (EMFILE) and asyncio stops accepting for a moment, so say so at start-up."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = settings.max_connections + settings.db_pool_max + 256  # + S3, hooks, the ops port, files
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("the open-files limit (%d) is below GATEWAY_MAX_CONNECTIONS + the pools (about %d): "
                    "raise it (ulimit -n) or lower GATEWAY_MAX_CONNECTIONS", soft, needed)


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (kill -9) drains and exits instead of serving unsupervised."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1)
    log.warning("supervising process %d is gone: shutting down", parent_pid)
    stop.set()


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop GATEWAY_EVENT_LOOP names (None: asyncio's default)."""
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run(app: web.Application, settings: Settings, *, on_ready: Callable[[], None] | None = None,
        parent_pid: int | None = None) -> None:
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        runner.run(serve(app, settings, on_ready=on_ready, parent_pid=parent_pid))
