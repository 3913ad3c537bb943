"""Running the app in a process, with a shutdown that lets uploads in flight finish.

On SIGTERM/SIGINT: stop listening, wait (up to the shutdown timeout) until no request is being
handled, then close. aiohttp's own graceful shutdown stops reading request bodies at once, which
would cut every PATCH streaming a part.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.config import Settings
from gateway.http.routes import IN_FLIGHT

log = logging.getLogger(__name__)


async def serve(app: web.Application, settings: Settings) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("shutting down: no new connections; waiting up to %.0fs for %d request(s) in flight",
                 settings.shutdown_timeout, app[IN_FLIGHT].count)
        await site.stop()
        try:
            await asyncio.wait_for(app[IN_FLIGHT].idle.wait(), settings.shutdown_timeout)
        except TimeoutError:
            log.warning("shutdown timeout: cutting %d request(s)", app[IN_FLIGHT].count)
    finally:
        await runner.cleanup()


def run(app: web.Application, settings: Settings) -> None:
    asyncio.run(serve(app, settings))
