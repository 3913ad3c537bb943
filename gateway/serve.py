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
import logging
import os
import signal
import time
from collections.abc import Callable

from aiohttp import web

from gateway.config import Settings
from gateway.http.keys import DRAINING
from gateway.http.routes import IN_FLIGHT, ops_app
from gateway.metrics import WORKER_STARTED

log = logging.getLogger(__name__)


async def serve(app: web.Application, settings: Settings, *, on_ready: Callable[[], None] | None = None,
                parent_pid: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or until the supervising process `parent_pid` is gone)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed first: a signal during start-up (pool, S3 client) shuts down cleanly once started.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    ops_runner = web.AppRunner(ops_app(app), handle_signals=False, access_log=None, shutdown_timeout=1)
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


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (kill -9) drains and exits instead of serving unsupervised."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1)
    log.warning("supervising process %d is gone: shutting down", parent_pid)
    stop.set()


def run(app: web.Application, settings: Settings, *, on_ready: Callable[[], None] | None = None,
        parent_pid: int | None = None) -> None:
    asyncio.run(serve(app, settings, on_ready=on_ready, parent_pid=parent_pid))
