"""The core's PartSigner over the fast SigV4 signer: upload-part and download URLs."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from gateway.core.ports import SignedPart
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

    def sign_part(self, key: str, multipart_id: str, number: int, size: int | None, *,
                  checksum_header: tuple[str, str] | None, expires_in: int) -> SignedPart:
        # Content-Length is signed so S3 refuses a wrong-sized part; browsers set it themselves,
        # so only the checksum header is one the client must add. (size None: a client protocol that
        # does not say which part is the last; sizes are then checked at confirm.)
        signed = {"Content-Length": str(size)} if size is not None else {}
        client_headers = {}
        if checksum_header is not None:
            name, value = checksum_header
            signed[name] = value
            client_headers[name] = value
        url = self.parts.presign_url(
            "PUT", self.bucket, key, query={"partNumber": str(number), "uploadId": multipart_id},
            signed_headers=signed, expires_in=expires_in)
        return SignedPart(url, client_headers)

    def sign_download(self, key: str, *, filename: str, content_type: str, expires_in: int) -> str:
        return self.downloads.presign_url(
            "GET", self.bucket, key,
            query={"response-content-disposition": content_disposition(filename),
                   "response-content-type": content_type},
            expires_in=expires_in)

    def credentials_expire_at(self) -> datetime | None:
        return self.credentials.expires_at
