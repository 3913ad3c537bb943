"""App factory: builds the adapters once per process, hands them to the core, mounts the http layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from gateway.config import Settings
from gateway.core.proxy import ProxyUploads
from gateway.core.uploads import Limits, UploadService
from gateway.core.worker import CompletionWorker
from gateway.db.pool import create_pool
from gateway.db.repository import PgUploadRepository
from gateway.http.auth import Authenticator
from gateway.http.demo import setup_demo
from gateway.http.keys import AUTHENTICATOR, PROXY, READINESS_CHECKS, SERVICE, SETTINGS
from gateway.http.routes import setup_http
from gateway.s3.presign import S3PartSigner
from gateway.s3.sigv4 import Credentials, SigV4Signer
from gateway.s3.store import S3ObjectStore, s3_client
from gateway.s3.stream import S3ByteStore

log = logging.getLogger(__name__)

POOL = web.AppKey("pool", asyncpg.Pool)
OBJECT_STORE = web.AppKey("object_store", S3ObjectStore)
COMPLETION_WORKER = web.AppKey("completion_worker", CompletionWorker)


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_upload_size=settings.max_upload_size, part_size=settings.part_size, upload_ttl=settings.upload_ttl,
        upload_max_age=settings.upload_max_age, presign_ttl=settings.presign_ttl,
        download_ttl=settings.download_ttl, sign_batch_max=settings.sign_batch_max,
        key_prefix=settings.s3_key_prefix, bucket=settings.s3_bucket, complete_timeout=settings.complete_timeout,
        head_reconcile_timeout=settings.head_reconcile_timeout, reconcile_interval=settings.reconcile_interval,
    )


def make_signer(settings: Settings, endpoint_url: str) -> SigV4Signer:
    credentials = Credentials(settings.s3_access_key_id, settings.s3_secret_access_key)
    return SigV4Signer(credentials, settings.s3_region, endpoint_url)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await create_pool(settings)
    # Streams PATCH bodies to S3: no total timeout (parts are large), but a stalled socket fails.
    data_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
        auto_decompress=False,
    )
    try:
        async with s3_client(settings) as client:
            store = S3ObjectStore(client, settings.s3_bucket)
            app[POOL] = pool
            app[OBJECT_STORE] = store
            # Presigned URLs carry the endpoint clients reach; streamed calls use the internal one.
            service = UploadService(
                PgUploadRepository(pool), store,
                S3PartSigner(make_signer(settings, settings.presign_endpoint_url), settings.s3_bucket),
                limits_from(settings))
            app[SERVICE] = service
            app[PROXY] = ProxyUploads(service, S3ByteStore(
                data_session, make_signer(settings, settings.s3_endpoint_url), settings.s3_bucket))

            async def database_ready() -> None:
                await pool.fetchval("select 1")

            app[READINESS_CHECKS] = {"postgres": database_ready, "s3": store.ping}
            worker = CompletionWorker(service, settings.completion_retry_after)
            app[COMPLETION_WORKER] = worker
            background = asyncio.create_task(worker.run_forever(interval=max(1.0, settings.completion_retry_after / 4)))
            try:
                yield
            finally:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
    finally:
        await data_session.close()
        await pool.close()


def create_app(settings: Settings, **app_options: Any) -> web.Application:
    settings.require_services()
    app = web.Application(**app_options)
    app[SETTINGS] = settings
    app[AUTHENTICATOR] = Authenticator(settings)
    app.cleanup_ctx.append(_resources)
    setup_http(app, settings.base_path, settings.cors_origins)
    if settings.demo_page:
        setup_demo(app)
    return app
