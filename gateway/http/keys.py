"""Typed keys for what the http layer reads from the application (wired by gateway.app)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config import Settings
from gateway.core.concat import Concatenation
from gateway.core.model import Allowance, Owner
from gateway.core.proxy import ProxyUploads
from gateway.core.uploads import UploadService
from gateway.http.auth import Authenticator

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", UploadService)
PROXY = web.AppKey("proxy", ProxyUploads)
CONCAT = web.AppKey("concat", Concatenation)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
# Named probes of the dependencies for /readyz: each raises when its dependency does not answer.
Probe = Callable[[], Awaitable[None]]
READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, Probe])
# Refresh scrape-time gauges (uploads by state, backlog, pool) before /metrics answers.
METRICS_SAMPLERS = web.AppKey("metrics_samplers", list[Probe])
# Set from the moment SIGTERM arrives (gateway/serve.py): /readyz answers 503 `draining`.
DRAINING = web.AppKey("draining", asyncio.Event)
# On the ops app (GATEWAY_METRICS_PORT): the API app whose probes, samplers and drain state it reports.
API_APP = web.AppKey("api_app", web.Application)
OWNER = web.RequestKey("owner", Owner)
# What the caller's token allows beyond the global limits (lower only), and its claims.
ALLOWANCE = web.RequestKey("allowance", Allowance)
