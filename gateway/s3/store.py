"""aiobotocore adapter of the core's ObjectStore: control-plane calls only (bytes never pass here)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from gateway.config import Settings
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import ConfirmedPart, PartChecksum
from gateway.core.ports import CompleteRefused, ListedPart, MultipartListing, ObjectHead, PartsPage
from gateway.metrics import timed_s3_call
from gateway.s3.stream import S3ByteStore

log = logging.getLogger(__name__)

_CHECKSUM_ALGORITHM = {PartChecksum.CRC32C: "CRC32C", PartChecksum.SHA256: "SHA256"}
_CHECKSUM_FIELD = {PartChecksum.CRC32C: "ChecksumCRC32C", PartChecksum.SHA256: "ChecksumSHA256"}


def _error_code(exc: ClientError) -> str:
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
async def _translate(operation: str, not_found: tuple[str, ...] = ()) -> AsyncIterator[None]:
    try:
        with timed_s3_call(operation):
            yield
    except ClientError as exc:
        code = _error_code(exc)
        if code in not_found:
            raise UploadError(ErrorCode.NOT_FOUND, f"S3 {operation}: {code}") from exc
        log.warning("S3 %s failed: %s", operation, code or exc)
        raise UploadError(ErrorCode.STORAGE_UNAVAILABLE, f"storage error during {operation}; retry shortly",
                          retry_after=2) from exc
    except (BotoCoreError, OSError, TimeoutError) as exc:
        log.warning("S3 %s failed: %r", operation, exc)
        raise UploadError(ErrorCode.STORAGE_UNAVAILABLE, f"storage unreachable during {operation}; retry shortly",
                          retry_after=2) from exc


class S3ObjectStore:
    def __init__(self, client: Any, bucket: str, raw: S3ByteStore) -> None:
        self.client = client
        self.bucket = bucket
        # The hottest control call (one per creation) goes through our own signer.
        self.raw = raw

    async def create_multipart(self, key: str, *, content_type: str, metadata: dict[str, str],
                               checksum: PartChecksum | None) -> str:
        algorithm = _CHECKSUM_ALGORITHM.get(checksum) if checksum else None
        return await self.raw.create_multipart(key, content_type=content_type, metadata=metadata,
                                               checksum_algorithm=algorithm)

    async def put_empty(self, key: str, *, content_type: str, metadata: dict[str, str]) -> None:
        async with _translate("PutObject"):
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=b"", ContentType=content_type,
                                         Metadata=metadata)

    async def list_parts(self, key: str, multipart_id: str, marker: int, max_parts: int) -> PartsPage:
        async with _translate("ListParts", not_found=("NoSuchUpload", "NoSuchKey")):
            response = await self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=multipart_id,
                                                    PartNumberMarker=marker, MaxParts=max_parts)
        parts = [
            ListedPart(
                number=int(p["PartNumber"]), size=int(p["Size"]), etag=str(p["ETag"]),
                checksum=p.get("ChecksumCRC32C") or p.get("ChecksumSHA256"), last_modified=p.get("LastModified"),
            )
            for p in response.get("Parts", [])
        ]
        return PartsPage(parts, int(response.get("NextPartNumberMarker") or 0), bool(response.get("IsTruncated")))

    async def complete(self, key: str, multipart_id: str, parts: Sequence[ConfirmedPart],
                       checksum: PartChecksum | None) -> None:
        field = _CHECKSUM_FIELD.get(checksum) if checksum else None
        listed = []
        for part in parts:
            entry: dict[str, Any] = {"PartNumber": part.number, "ETag": part.etag}
            if field and part.checksum:
                entry[field] = part.checksum
            listed.append(entry)
        try:
            # botocore turns a 200 whose body is <Error> into a ClientError for this operation.
            async with _translate("CompleteMultipartUpload"):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=multipart_id, MultipartUpload={"Parts": listed})
        except UploadError as exc:
            cause = exc.__cause__
            code = _error_code(cause) if isinstance(cause, ClientError) else ""
            if code in ("NoSuchUpload", "NoSuchKey"):
                raise CompleteRefused("no_such_upload") from cause
            if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "BadDigest", "InvalidRequest"):
                raise CompleteRefused("invalid_part") from cause
            raise

    async def abort(self, key: str, multipart_id: str) -> None:
        try:
            async with _translate("AbortMultipartUpload", not_found=("NoSuchUpload", "NoSuchKey")):
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart_id)
        except UploadError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                raise

    async def delete_object(self, key: str) -> None:
        async with _translate("DeleteObject"):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def head_object(self, key: str) -> ObjectHead | None:
        try:
            async with _translate("HeadObject", not_found=("404", "NoSuchKey", "NotFound")):
                response = await self.client.head_object(Bucket=self.bucket, Key=key)
        except UploadError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return None
            raise
        return ObjectHead(int(response["ContentLength"]), dict(response.get("Metadata") or {}))

    async def delete_objects(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            async with _translate("DeleteObjects"):
                await self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    async def upload_part_copy(self, key: str, multipart_id: str, number: int, source_key: str,
                               start: int, end: int) -> str:
        async with _translate("UploadPartCopy"):
            response = await self.client.upload_part_copy(
                Bucket=self.bucket, Key=key, UploadId=multipart_id, PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source_key}, CopySourceRange=f"bytes={start}-{end - 1}")
        return str(response["CopyPartResult"]["ETag"])

    async def list_multipart_uploads(self, prefix: str) -> AsyncIterator[MultipartListing]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        async with _translate("ListMultipartUploads"):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Uploads", []):
                    yield MultipartListing(str(item["Key"]), str(item["UploadId"]), item["Initiated"])

    async def ping(self) -> None:
        async with _translate("HeadBucket"):
            await self.client.head_bucket(Bucket=self.bucket)
