"""The aiobotocore S3 client of a process, the S3 settings every request shares (addressing, object
settings), and the translation of botocore's errors into the core's."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from gateway.config import Settings, is_aws_endpoint
from gateway.core.errors import ErrorCode, UploadError
from gateway.metrics import timed_s3_call

log = logging.getLogger(__name__)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def virtual_hosted(settings: Settings, endpoint_url: str) -> bool:
    """GATEWAY_S3_ADDRESSING_STYLE for this endpoint. `auto` is virtual-hosted on AWS for bucket names
    that are one DNS label (dotted names break TLS on `*.s3...` certificates), path-style elsewhere
    (S3-compatible servers and local endpoints rarely have per-bucket DNS)."""
    style = settings.s3_addressing_style
    if style != "auto":
        return style == "virtual"
    return is_aws_endpoint(endpoint_url) and bool(_DNS_BUCKET.match(settings.s3_bucket))


ACCELERATE_ENDPOINT = "https://s3-accelerate.amazonaws.com"


def object_headers(settings: Settings) -> dict[str, str]:
    """Headers of every object and multipart upload the gateway creates (encryption, storage class)."""
    headers = {}
    if settings.s3_sse:
        headers["x-amz-server-side-encryption"] = settings.s3_sse
    if settings.s3_sse_kms_key_id:
        headers["x-amz-server-side-encryption-aws-kms-key-id"] = settings.s3_sse_kms_key_id
    if settings.s3_storage_class:
        headers["x-amz-storage-class"] = settings.s3_storage_class
    return headers


@contextlib.asynccontextmanager
async def s3_client(settings: Settings, session: Any = None) -> AsyncIterator[Any]:
    """One client per process, entered once in the app factory. Without static keys it signs with the
    session's credential chain: the same refreshing credentials object our own signer reads."""
    style = "virtual" if virtual_hosted(settings, settings.s3_endpoint) else "path"
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": style},
        # botocore >= 1.36 adds CRC32 to requests by default; S3-compatibles and fixed algorithms disagree.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=64,
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    session = session or get_session()
    async with session.create_client(
        "s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
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


