"""App factory: builds the adapters once per process, hands them to the core, mounts the http layer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from gateway.config import Settings
from gateway.core.completion import Completion, CompletionWorker
from gateway.core.concat import Concatenation
from gateway.core.events import EventDispatcher
from gateway.core.limits import Limits
from gateway.core.model import State
from gateway.core.ports import Quota
from gateway.core.proxy import ProxyUploads
from gateway.core.uploads import UploadService
from gateway.core.worker import Sweeper, run_periodically
from gateway.db.pool import create_pool
from gateway.db.repository import PgUploadRepository
from gateway.hooks import HttpCreateHook, HttpWebhookSender
from gateway.http.auth import Authenticator
from gateway.http.demo import setup_demo
from gateway.http.keys import (
    AUTHENTICATOR,
    CONCAT,
    METRICS_SAMPLERS,
    PROXY,
    READINESS_CHECKS,
    SERVICE,
    SETTINGS,
    Probe,
)
from gateway.http.routes import setup_http
from gateway.metrics import DB_POOL_SIZE, UPLOADS, WEBHOOK_BACKLOG
from gateway.s3.adapters import s3_adapters
from gateway.s3.credentials import CredentialSource
from gateway.s3.objects import S3ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Background:
    """The periodic jobs of an instance, exposed so `gateway sweep` and tests can run them once."""

    completion: CompletionWorker
    sweeper: Sweeper
    dispatcher: EventDispatcher | None


@dataclass(frozen=True)
class Services:
    """Every use case and adapter of a process, built once by `gateway_services`."""

    uploads: UploadService
    proxy: ProxyUploads
    concat: Concatenation
    background: Background
    repo: PgUploadRepository
    store: S3ObjectStore
    pool: asyncpg.Pool
    credentials: CredentialSource


BACKGROUND = web.AppKey("background", Background)
# Gauges that need SQL are sampled at most this often per process.
GAUGE_SQL_EVERY = 5.0


def limits_from(settings: Settings) -> Limits:
    """Every Limits field but the quota is the setting of the same name."""
    copied = {f.name: getattr(settings, f.name) for f in fields(Limits) if f.name != "quota"}
    return Limits(**copied, quota=Quota(settings.max_active_uploads_per_owner, settings.max_active_bytes_per_owner))


@contextlib.asynccontextmanager
async def gateway_services(settings: Settings) -> AsyncIterator[Services]:
    """Every long-lived resource of a process, created once and closed in reverse order."""
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        # Streams PATCH bodies to S3: no total timeout (parts are large), but a stalled socket fails.
        data_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120), auto_decompress=False)
        stack.push_async_callback(data_session.close)
        hook_session = aiohttp.ClientSession()
        stack.push_async_callback(hook_session.close)
        s3 = await stack.enter_async_context(s3_adapters(settings, data_session))
        store, signed = s3.store, s3.signed
        repo = PgUploadRepository(pool)
        limits = limits_from(settings)
        create_hook = (HttpCreateHook(hook_session, settings.pre_create_hook_url, settings.hook_timeout)
                       if settings.pre_create_hook_url else None)
        completion = Completion(repo, store, limits)
        completion_worker = CompletionWorker(repo, completion, settings.completion_retry_after)
        sweeper = Sweeper(repo, store, completion_worker, key_prefix=settings.s3_key_prefix,
                          tombstone_days=settings.tombstone_days, orphan_grace=settings.orphan_grace)
        dispatcher = (EventDispatcher(repo, HttpWebhookSender(hook_session, settings.webhook_secret,
                                                              settings.hook_timeout), settings.webhook_urls)
                      if settings.webhook_urls else None)
        yield Services(
            uploads=UploadService(repo, store, s3.part_signer, completion, limits, create_hook),
            proxy=ProxyUploads(repo, signed, completion, limits),
            concat=Concatenation(repo, store, signed, completion, limits),
            background=Background(completion_worker, sweeper, dispatcher),
            repo=repo, store=store, pool=pool, credentials=s3.credentials)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with gateway_services(settings) as services:
        pool, repo, background = services.pool, services.repo, services.background
        app[SERVICE] = services.uploads
        app[PROXY] = services.proxy
        app[CONCAT] = services.concat
        app[BACKGROUND] = background
        upload_prefix = f"{settings.s3_key_prefix}/" if settings.s3_key_prefix else ""
        probes: dict[str, Probe] = {"postgres": repo.ping, "s3": functools.partial(services.store.ping, upload_prefix)}
        app[READINESS_CHECKS] = probes

        async def sample_pool() -> None:  # every worker its own (summed over live workers)
            DB_POOL_SIZE.labels("open").set(pool.get_size())
            DB_POOL_SIZE.labels("idle").set(pool.get_idle_size())

        sampled_at = -GAUGE_SQL_EVERY

        async def sample_gauges() -> None:
            """The SQL gauges at most every few seconds per process, not per scrape; the most recent
            sample of any worker is what a scrape shows."""
            nonlocal sampled_at
            await sample_pool()
            if time.monotonic() - sampled_at < GAUGE_SQL_EVERY:
                return
            sampled_at = time.monotonic()  # a failed sample is not retried before the next interval either
            counts = await repo.count_by_state()
            for state in State:  # a state that has emptied shows 0, not its last count
                UPLOADS.labels(state.value).set(counts.get(state.value, 0))
            WEBHOOK_BACKLOG.set(await repo.backlog())

        samplers: list[Probe] = [sample_gauges]
        app[METRICS_SAMPLERS] = samplers
        sweep_every = min(settings.sweep_interval, settings.completion_retry_after / 2)
        jobs = [services.credentials.keep_fresh(),
                run_periodically("sweeper", sweep_every, background.sweeper.run_once),
                run_periodically("pool gauges", GAUGE_SQL_EVERY, sample_pool)]
        if background.dispatcher is not None:
            jobs.append(run_periodically("webhooks", 1.0, background.dispatcher.run_once))
        tasks = [asyncio.create_task(job) for job in jobs]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _identity(app: web.Application) -> AsyncIterator[None]:
    """The token verifier, with the HTTP session its identity providers' key sets are fetched with."""
    async with aiohttp.ClientSession() as http:
        app[AUTHENTICATOR] = Authenticator(app[SETTINGS], http)
        yield


def create_app(settings: Settings, **app_options: Any) -> web.Application:
    settings.require_services()
    app = web.Application(**app_options)
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([_identity, _resources])
    setup_http(app)
    if settings.demo_page:
        setup_demo(app)
    return app
