"""The core's PartSigner over the fast SigV4 signer: upload-part and download URLs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from urllib.parse import quote

from gateway.core.ports import PartToSign, SignedPart
from gateway.s3.credentials import CredentialSource
from gateway.s3.sigv4 import SigV4Signer


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the exact name in RFC 5987 form."""
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\;' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class S3PartSigner:
    """Part URLs may go to another endpoint than downloads (S3 Transfer Acceleration)."""

    def __init__(self, parts: SigV4Signer, downloads: SigV4Signer, bucket: str,
                 credentials: CredentialSource) -> None:
        self.parts = parts
        self.downloads = downloads
        self.bucket = bucket
        self.credentials = credentials

    def sign_parts(self, key: str, multipart_id: str, parts: Sequence[PartToSign], *,
                   expires_in: int) -> list[SignedPart]:
        # Content-Length is signed so S3 refuses a wrong-sized part; browsers set it themselves,
        # so only the checksum header is one the client must add. (size None: a client protocol that
        # does not say which part is the last; sizes are then checked at confirm.)
        requests = []
        client_headers = []
        for part in parts:
            signed = {"Content-Length": str(part.size)} if part.size is not None else {}
            extra = {}
            if part.checksum_header is not None:
                name, value = part.checksum_header
                signed[name] = extra[name] = value
            requests.append(({"partNumber": str(part.number), "uploadId": multipart_id}, signed))
            client_headers.append(extra)
        urls = self.parts.presign_urls("PUT", self.bucket, key, requests, expires_in=expires_in)
        return [SignedPart(url, headers) for url, headers in zip(urls, client_headers, strict=True)]

    def sign_download(self, key: str, *, filename: str, content_type: str, expires_in: int) -> str:
        return self.downloads.presign_url(
            "GET", self.bucket, key,
            query={"response-content-disposition": content_disposition(filename),
                   "response-content-type": content_type},
            expires_in=expires_in)

    def credentials_expire_at(self) -> datetime | None:
        return self.credentials.expires_at
