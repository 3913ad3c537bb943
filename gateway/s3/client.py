"""The aiobotocore S3 client of a process, and the translation of its errors into the core's."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from gateway.config import Settings
from gateway.core.errors import ErrorCode, UploadError
from gateway.metrics import timed_s3_call

log = logging.getLogger(__name__)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.asynccontextmanager
async def s3_client(settings: Settings) -> AsyncIterator[Any]:
    """One client per process, entered once in the app factory."""
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        # botocore >= 1.36 adds CRC32 to requests by default; S3-compatibles and fixed algorithms disagree.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=64,
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=settings.s3_secret_access_key or None, config=config,
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def translate(operation: str, not_found: tuple[str, ...] = ()) -> AsyncIterator[None]:
    try:
        with timed_s3_call(operation):
            yield
    except ClientError as exc:
        code = error_code(exc)
        if code in not_found:
            raise UploadError(ErrorCode.NOT_FOUND, f"S3 {operation}: {code}") from exc
        log.warning("S3 %s failed: %s", operation, code or exc)
        raise UploadError(ErrorCode.STORAGE_UNAVAILABLE, f"storage error during {operation}; retry shortly",
                          retry_after=2) from exc
    except (BotoCoreError, OSError, TimeoutError) as exc:
        log.warning("S3 %s failed: %r", operation, exc)
        raise UploadError(ErrorCode.STORAGE_UNAVAILABLE, f"storage unreachable during {operation}; retry shortly",
                          retry_after=2) from exc


