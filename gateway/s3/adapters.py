"""The S3 adapters of a process, built once: credentials, the aiobotocore client, our signers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiobotocore.session import get_session

from gateway.config import Settings
from gateway.s3.client import ACCELERATE_ENDPOINT, object_headers, s3_client, virtual_hosted
from gateway.s3.credentials import CredentialSource
from gateway.s3.objects import S3ObjectStore
from gateway.s3.presign import S3PartSigner
from gateway.s3.signed_requests import S3SignedRequests
from gateway.s3.sigv4 import SigV4Signer


@dataclass(frozen=True)
class S3Adapters:
    store: S3ObjectStore
    signed: S3SignedRequests
    part_signer: S3PartSigner
    credentials: CredentialSource


def make_signer(settings: Settings, endpoint_url: str, credentials: CredentialSource | None = None) -> SigV4Signer:
    """Our signer for one endpoint, addressed as GATEWAY_S3_ADDRESSING_STYLE says, signing with the
    credentials current at each call."""
    source = credentials or CredentialSource.static(settings.s3_access_key_id, settings.s3_secret_access_key)
    return SigV4Signer(lambda: source.current, settings.s3_region, endpoint_url,
                       virtual_host=virtual_hosted(settings, endpoint_url))


@contextlib.asynccontextmanager
async def s3_adapters(settings: Settings, data_session: aiohttp.ClientSession) -> AsyncIterator[S3Adapters]:
    session = get_session()
    if settings.s3_access_key_id:
        credentials = CredentialSource.static(settings.s3_access_key_id, settings.s3_secret_access_key)
    else:
        credentials = await CredentialSource.from_chain(session)
    async with s3_client(settings, session) as client:
        signed = S3SignedRequests(data_session, make_signer(settings, settings.s3_endpoint, credentials),
                                  settings.s3_bucket, object_headers(settings))
        # Presigned URLs carry the endpoint clients reach; streamed calls use the internal one.
        downloads = make_signer(settings, settings.presign_endpoint_url, credentials)
        parts = (SigV4Signer(lambda: credentials.current, settings.s3_region, ACCELERATE_ENDPOINT, virtual_host=True)
                 if settings.s3_accelerate else downloads)
        yield S3Adapters(S3ObjectStore(client, settings.s3_bucket, signed),
                         signed, S3PartSigner(parts, downloads, settings.s3_bucket, credentials), credentials)
