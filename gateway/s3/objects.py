"""The core's ObjectStore port: multipart lifecycle, listings, copies and deletes (bytes never pass here).

Most calls go through the aiobotocore client; the hottest (CreateMultipartUpload, ListParts, DeleteObjects)
through our own signer in gateway.s3.signed_requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from botocore.exceptions import ClientError

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import ConfirmedPart, PartChecksum
from gateway.core.ports import CompleteRefused, MultipartListing, ObjectHead, PartsPage
from gateway.s3.client import error_code, translate
from gateway.s3.signed_requests import S3SignedRequests

_CHECKSUM_ALGORITHM = {PartChecksum.CRC32C: "CRC32C", PartChecksum.SHA256: "SHA256"}
_CHECKSUM_FIELD = {PartChecksum.CRC32C: "ChecksumCRC32C", PartChecksum.SHA256: "ChecksumSHA256"}


class S3ObjectStore:
    def __init__(self, client: Any, bucket: str, signed: S3SignedRequests) -> None:
        self.client = client
        self.bucket = bucket
        self.signed = signed

    async def create_multipart(self, key: str, *, content_type: str, metadata: dict[str, str],
                               checksum: PartChecksum | None, filename: str | None = None) -> str:
        algorithm = _CHECKSUM_ALGORITHM.get(checksum) if checksum else None
        return await self.signed.create_multipart(key, content_type=content_type, metadata=metadata,
                                                  checksum_algorithm=algorithm, filename=filename)

    async def put_empty(self, key: str, *, content_type: str, metadata: dict[str, str],
                        filename: str | None = None) -> None:
        await self.signed.put_empty(key, content_type=content_type, metadata=metadata, filename=filename)

    async def list_parts(self, key: str, multipart_id: str, marker: int, max_parts: int) -> PartsPage:
        return await self.signed.list_parts(key, multipart_id, marker, max_parts)

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
            async with translate("CompleteMultipartUpload"):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=multipart_id, MultipartUpload={"Parts": listed})
        except UploadError as exc:
            cause = exc.__cause__
            code = error_code(cause) if isinstance(cause, ClientError) else ""
            if code in ("NoSuchUpload", "NoSuchKey"):
                raise CompleteRefused("no_such_upload") from cause
            if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "BadDigest", "InvalidRequest"):
                raise CompleteRefused("invalid_part") from cause
            raise

    async def abort(self, key: str, multipart_id: str) -> None:
        try:
            async with translate("AbortMultipartUpload", not_found=("NoSuchUpload", "NoSuchKey")):
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart_id)
        except UploadError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                raise

    async def delete_object(self, key: str) -> None:
        async with translate("DeleteObject"):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def head_object(self, key: str) -> ObjectHead | None:
        try:
            # Without s3:ListBucket (deploy/iam-policy.json) S3 answers a missing key with 403, not 404.
            async with translate("HeadObject", not_found=("404", "NoSuchKey", "NotFound", "403", "AccessDenied")):
                response = await self.client.head_object(Bucket=self.bucket, Key=key)
        except UploadError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return None
            raise
        return ObjectHead(int(response["ContentLength"]), dict(response.get("Metadata") or {}))

    async def delete_objects(self, keys: Sequence[str]) -> None:
        await self.signed.delete_objects(keys)

    async def upload_part_copy(self, key: str, multipart_id: str, number: int, source_key: str,
                               start: int, end: int) -> str:
        async with translate("UploadPartCopy"):
            response = await self.client.upload_part_copy(
                Bucket=self.bucket, Key=key, UploadId=multipart_id, PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source_key}, CopySourceRange=f"bytes={start}-{end - 1}")
        return str(response["CopyPartResult"]["ETag"])

    async def list_multipart_uploads(self, prefix: str) -> AsyncIterator[MultipartListing]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        async with translate("ListMultipartUploads"):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Uploads", []):
                    yield MultipartListing(str(item["Key"]), str(item["UploadId"]), item["Initiated"])

    async def ping(self, prefix: str = "") -> None:
        """Readiness: the call the sweeper makes anyway, so the least-privilege policy
        (deploy/iam-policy.json) allows it; HeadBucket would need s3:ListBucket."""
        async with translate("ListMultipartUploads"):
            await self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix, MaxUploads=1)
