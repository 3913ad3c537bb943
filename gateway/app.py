"""App factory: builds the adapters once per process, hands them to the core, mounts the http layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from gateway.config import Settings
from gateway.core.concat import Concatenation
from gateway.core.events import EventDispatcher
from gateway.core.ports import Quota
from gateway.core.proxy import ProxyUploads
from gateway.core.uploads import Limits, UploadService
from gateway.core.worker import CompletionWorker, Sweeper, run_periodically
from gateway.db.pool import create_pool
from gateway.db.repository import PgUploadRepository
from gateway.hooks import HttpCreateHook, HttpWebhookSender
from gateway.metrics import DB_POOL_SIZE, UPLOADS, WEBHOOK_BACKLOG
from gateway.http.auth import Authenticator
from gateway.http.demo import setup_demo
from gateway.http.keys import AUTHENTICATOR, CONCAT, METRICS_SAMPLERS, PROXY, READINESS_CHECKS, SERVICE, SETTINGS
from gateway.http.routes import setup_http
from gateway.s3.presign import S3PartSigner
from gateway.s3.sigv4 import Credentials, SigV4Signer
from gateway.s3.store import S3ObjectStore, s3_client
from gateway.s3.stream import S3ByteStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Background:
    """The periodic jobs of an instance, exposed so `gateway sweep` and tests can run them once."""

    completion: CompletionWorker
    sweeper: Sweeper
    dispatcher: EventDispatcher | None


POOL = web.AppKey("pool", asyncpg.Pool)
REPOSITORY = web.AppKey("repository", PgUploadRepository)
BACKGROUND = web.AppKey("background", Background)


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_upload_size=settings.max_upload_size, part_size=settings.part_size, upload_ttl=settings.upload_ttl,
        upload_max_age=settings.upload_max_age, presign_ttl=settings.presign_ttl,
        download_ttl=settings.download_ttl, sign_batch_max=settings.sign_batch_max,
        key_prefix=settings.s3_key_prefix, bucket=settings.s3_bucket, complete_timeout=settings.complete_timeout,
        head_reconcile_timeout=settings.head_reconcile_timeout, reconcile_interval=settings.reconcile_interval,
        quota=Quota(settings.max_active_uploads_per_owner, settings.max_active_bytes_per_owner),
    )


def make_signer(settings: Settings, endpoint_url: str) -> SigV4Signer:
    credentials = Credentials(settings.s3_access_key_id, settings.s3_secret_access_key)
    return SigV4Signer(credentials, settings.s3_region, endpoint_url)


@contextlib.asynccontextmanager
async def gateway_services(settings: Settings) -> AsyncIterator[tuple[
        UploadService, ProxyUploads, Concatenation, Background, PgUploadRepository, asyncpg.Pool]]:
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
        client = await stack.enter_async_context(s3_client(settings))
        byte_store = S3ByteStore(data_session, make_signer(settings, settings.s3_endpoint_url), settings.s3_bucket)
        store = S3ObjectStore(client, settings.s3_bucket, byte_store)
        repo = PgUploadRepository(pool)
        create_hook = (HttpCreateHook(hook_session, settings.pre_create_hook_url, settings.hook_timeout)
                       if settings.pre_create_hook_url else None)
        # Presigned URLs carry the endpoint clients reach; streamed calls use the internal one.
        service = UploadService(
            repo, store, S3PartSigner(make_signer(settings, settings.presign_endpoint_url), settings.s3_bucket),
            limits_from(settings), create_hook)
        proxy = ProxyUploads(service, byte_store)
        completion = CompletionWorker(service, settings.completion_retry_after)
        sweeper = Sweeper(service, completion, tombstone_days=settings.tombstone_days,
                          orphan_grace=settings.orphan_grace)
        dispatcher = (EventDispatcher(repo, HttpWebhookSender(hook_session, settings.webhook_secret,
                                                              settings.hook_timeout), settings.webhook_urls)
                      if settings.webhook_urls else None)
        yield service, proxy, Concatenation(service, byte_store), Background(completion, sweeper, dispatcher), repo, pool


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with gateway_services(settings) as (service, proxy, concat, background, repo, pool):
        app[POOL] = pool
        app[REPOSITORY] = repo
        app[SERVICE] = service
        app[PROXY] = proxy
        app[CONCAT] = concat
        app[BACKGROUND] = background

        app[READINESS_CHECKS] = {"postgres": repo.ping, "s3": service.store.ping}

        async def sample_gauges() -> None:
            DB_POOL_SIZE.labels("open").set(pool.get_size())
            DB_POOL_SIZE.labels("idle").set(pool.get_idle_size())
            for state, count in (await repo.count_by_state()).items():
                UPLOADS.labels(state).set(count)
            WEBHOOK_BACKLOG.set(await repo.backlog())

        app[METRICS_SAMPLERS] = [sample_gauges]
        jobs = [run_periodically("sweeper", min(settings.sweep_interval, settings.completion_retry_after / 2),
                                 background.sweeper.run_once)]
        if background.dispatcher is not None:
            jobs.append(run_periodically("webhooks", 1.0, background.dispatcher.run_once))
        tasks = [asyncio.create_task(job) for job in jobs]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def create_app(settings: Settings, **app_options: Any) -> web.Application:
    settings.require_services()
    app = web.Application(**app_options)
    app[SETTINGS] = settings
    app[AUTHENTICATOR] = Authenticator(settings)
    app.cleanup_ctx.append(_resources)
    setup_http(app)
    if settings.demo_page:
        setup_demo(app)
    return app
