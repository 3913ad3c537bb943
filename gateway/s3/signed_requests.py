"""S3 requests signed by our own SigV4 signer and sent over aiohttp: the core's ByteStore port (the
proxy path's streamed bodies) and the hot control calls (CreateMultipartUpload, ListParts, DeleteObjects).

aiobotocore cannot stream a request body into UploadPart (botocore wants a seekable body, hashes it
and adds a CRC32), so PUTs go out with `UNSIGNED-PAYLOAD`, an explicit Content-Length and no
retries: a retry is the client resuming. CreateMultipartUpload and ListParts (every confirm) skip
botocore's per-call overhead: about 1 ms of CPU per call there, against ~0.1 ms for our signer, one
aiohttp request and ElementTree's C parser.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from xml.etree import ElementTree
from xml.sax.saxutils import escape, unescape

import aiohttp
from yarl import URL

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.ports import ListedPart, PartsPage
from gateway.metrics import timed_s3_call
from gateway.s3.presign import content_disposition
from gateway.s3.sigv4 import SigV4Signer

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
# Answers of a server without multi-object delete.
_NOT_IMPLEMENTED = (405, 501)
_UPLOAD_ID = re.compile(r"<UploadId>([^<]+)</UploadId>")
_ERROR_CODE = re.compile(rb"<Code>([^<]+)</Code>")
# A listing of a multipart upload that is gone (completed, aborted) or never existed.
_UPLOAD_GONE = (b"NoSuchUpload", b"NoSuchKey")


def _local(tag: str) -> str:
    """An element's name without its namespace (AWS answers in S3's, some stores in none)."""
    return tag.rpartition("}")[2]


def parse_list_parts(body: bytes) -> PartsPage:
    """A ListPartsResult document as the core's PartsPage."""
    parts: list[ListedPart] = []
    next_marker, truncated = 0, False
    for element in ElementTree.fromstring(body):
        name = _local(element.tag)
        if name == "Part":
            fields = {_local(child.tag): child.text or "" for child in element}
            modified = fields.get("LastModified")
            parts.append(ListedPart(
                number=int(fields["PartNumber"]), size=int(fields["Size"]), etag=fields.get("ETag", ""),
                checksum=fields.get("ChecksumCRC32C") or fields.get("ChecksumSHA256") or None,
                last_modified=datetime.fromisoformat(modified) if modified else None))
        elif name == "NextPartNumberMarker":
            next_marker = int(element.text or 0)
        elif name == "IsTruncated":
            truncated = (element.text or "").strip().lower() == "true"
    return PartsPage(parts, next_marker, truncated)


def _storage_error(operation: str, detail: str) -> UploadError:
    log.warning("S3 %s failed: %s", operation, detail)
    return UploadError(ErrorCode.STORAGE_UNAVAILABLE, f"storage error during {operation}; retry shortly",
                       retry_after=2)


class S3SignedRequests:
    def __init__(self, session: aiohttp.ClientSession, signer: SigV4Signer, bucket: str,
                 object_headers: dict[str, str] | None = None) -> None:
        self.session = session
        self.signer = signer
        self.bucket = bucket
        # Encryption and storage class of what the gateway creates (gateway.s3.client.object_headers);
        # short-lived stash segments keep the encryption but not the storage class (IA classes bill
        # every object for 30 days and at least 128 KiB).
        self.object_headers = object_headers or {}
        self.stash_headers = {k: v for k, v in self.object_headers.items() if k != "x-amz-storage-class"}
        # Cleared once the server says it has no multi-object delete (GCS's XML API).
        self.multi_delete = True

    async def _request(self, method: str, key: str, *, query: dict[str, str] | None = None,
                       headers: dict[str, str] | None = None, body: AsyncIterator[bytes] | bytes | None = None,
                       operation: str) -> aiohttp.ClientResponse:
        signed = self.signer.sign_headers(method, self.bucket, key, query=query, headers=headers or {})
        url = URL(self.signer.url(self.bucket, key, query), encoded=True)
        try:
            response = await self.session.request(method, url, headers=signed, data=body)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _storage_error(operation, repr(exc)) from exc
        return response

    async def _put(self, key: str, size: int, body: AsyncIterator[bytes] | bytes, query: dict[str, str] | None,
                   operation: str, headers: dict[str, str] | None = None) -> str:
        with timed_s3_call(operation):
            response = await self._request("PUT", key, query=query,
                                           headers={**(headers or {}), "Content-Length": str(size)},
                                           body=body, operation=operation)
            async with response:
                text = await response.text()
                if response.status != 200:
                    raise _storage_error(operation, f"{response.status} {text[:300]}")
                return response.headers.get("ETag", "")

    async def upload_part(self, key: str, multipart_id: str, number: int, size: int,
                          body: AsyncIterator[bytes]) -> str:
        return await self._put(key, size, body, {"partNumber": str(number), "uploadId": multipart_id}, "UploadPart")

    async def put_object(self, key: str, size: int, body: AsyncIterator[bytes]) -> None:
        await self._put(key, size, body, None, "PutObject", self.stash_headers)

    async def put_empty(self, key: str, *, content_type: str, metadata: dict[str, str],
                        filename: str | None = None) -> None:
        headers = self._creation_headers(content_type, metadata, filename)
        await self._put(key, 0, b"", None, "PutObject", headers)

    def _creation_headers(self, content_type: str, metadata: dict[str, str], filename: str | None) -> dict[str, str]:
        """What the final object carries: type, name (a plain GET serves it right), metadata, settings."""
        headers = {"Content-Type": content_type, **self.object_headers,
                   **{f"x-amz-meta-{k}": v for k, v in metadata.items()}}
        if filename:
            headers["Content-Disposition"] = content_disposition(filename)
        return headers

    async def read_object(self, key: str, start: int | None = None, end: int | None = None
                          ) -> AsyncIterator[bytes]:
        headers = {"Range": f"bytes={start or 0}-{end - 1}"} if end is not None else None
        response = await self._request("GET", key, headers=headers, operation="GetObject")
        async with response:
            if response.status not in (200, 206):
                raise _storage_error("GetObject", f"{response.status} {(await response.text())[:300]}")
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                yield chunk

    async def create_multipart(self, key: str, *, content_type: str, metadata: dict[str, str],
                               checksum_algorithm: str | None, filename: str | None = None) -> str:
        """CreateMultipartUpload without botocore's per-call overhead (about 1 ms of CPU per creation)."""
        headers = self._creation_headers(content_type, metadata, filename)
        if checksum_algorithm:
            headers["x-amz-checksum-algorithm"] = checksum_algorithm
        with timed_s3_call("CreateMultipartUpload"):
            response = await self._request("POST", key, query={"uploads": ""}, headers=headers, body=b"",
                                           operation="CreateMultipartUpload")
            async with response:
                text = await response.text()
        match = _UPLOAD_ID.search(text)
        if response.status != 200 or match is None:
            raise _storage_error("CreateMultipartUpload", f"{response.status} {text[:300]}")
        return unescape(match.group(1))

    async def list_parts(self, key: str, multipart_id: str, marker: int, max_parts: int) -> PartsPage:
        """One ListParts page; NOT_FOUND when the multipart upload is gone."""
        query = {"uploadId": multipart_id, "part-number-marker": str(marker), "max-parts": str(max_parts)}
        with timed_s3_call("ListParts"):
            response = await self._request("GET", key, query=query, operation="ListParts")
            async with response:
                body = await response.read()
        if response.status == 200:
            try:
                return parse_list_parts(body)
            except (ElementTree.ParseError, KeyError, ValueError) as exc:
                raise _storage_error("ListParts", f"unreadable answer: {exc!r} {body[:300]!r}") from exc
        code = _ERROR_CODE.search(body)
        if code is not None and code.group(1) in _UPLOAD_GONE:
            raise UploadError(ErrorCode.NOT_FOUND, f"S3 ListParts: {code.group(1).decode()}")
        raise _storage_error("ListParts", f"{response.status} {body[:300]!r}")

    async def delete_objects(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            if not self.multi_delete or not await self._delete_batch(batch):
                await asyncio.gather(*(self._delete_one(key) for key in batch))

    async def _delete_batch(self, keys: Sequence[str]) -> bool:
        """DeleteObjects; False (and single deletes from then on) where the server lacks it (GCS)."""
        xml = "<Delete><Quiet>true</Quiet>" + "".join(
            f"<Object><Key>{escape(k)}</Key></Object>" for k in keys) + "</Delete>"
        payload = xml.encode()
        # DeleteObjects requires Content-MD5.
        headers = {"Content-MD5": base64.b64encode(hashlib.md5(payload).digest()).decode(),
                   "Content-Length": str(len(payload))}
        response = await self._request("POST", "", query={"delete": ""}, headers=headers, body=payload,
                                       operation="DeleteObjects")
        async with response:
            text = await response.text()
        if response.status in _NOT_IMPLEMENTED or "<Code>NotImplemented</Code>" in text:
            log.warning("S3 DeleteObjects is not supported here (%s); deleting objects one by one", response.status)
            self.multi_delete = False
            return False
        if response.status != 200 or "<Error>" in text:
            raise _storage_error("DeleteObjects", f"{response.status} {text[:300]}")
        return True

    async def _delete_one(self, key: str) -> None:
        response = await self._request("DELETE", key, operation="DeleteObject")
        async with response:
            if response.status not in (200, 204, 404):
                raise _storage_error("DeleteObject", f"{response.status} {(await response.text())[:300]}")
