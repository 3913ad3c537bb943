"""The core's PartSigner over the fast SigV4 signer: upload-part and download URLs."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from gateway.core.ports import SignedPart
from gateway.s3.sigv4 import SigV4Signer


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the exact name in RFC 5987 form."""
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\;' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class S3PartSigner:
    def __init__(self, signer: SigV4Signer, bucket: str) -> None:
        self.signer = signer
        self.bucket = bucket

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
        url = self.signer.presign_url(
            "PUT", self.bucket, key, query={"partNumber": str(number), "uploadId": multipart_id},
            signed_headers=signed, expires_in=expires_in)
        return SignedPart(url, client_headers)

    def sign_download(self, key: str, *, filename: str, content_type: str, expires_in: int) -> str:
        return self.signer.presign_url(
            "GET", self.bucket, key,
            query={"response-content-disposition": content_disposition(filename),
                   "response-content-type": content_type},
            expires_in=expires_in)

    def credentials_expire_at(self) -> datetime | None:
        return None  # static keys; STS credentials would report their expiry here
