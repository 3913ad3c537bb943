"""gateway.s3.sigv4 must be byte-for-byte identical to botocore.

botocore's SigV4 signers read the clock via ``botocore.auth.get_current_datetime``
(-> ``datetime.datetime.now(timezone.utc)``, *not* ``utcnow``), so that is the
name patched to freeze time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, quote, urlsplit

import botocore.session
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials

from gateway.s3 import sigv4
from gateway.s3.sigv4 import UNSIGNED_PAYLOAD, Credentials, SigV4Signer

NOW = datetime(2024, 5, 6, 7, 8, 9)  # naive UTC, like botocore's clock
REGION = "us-east-1"
AK, SK, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZ/token+with=odd&chars"
HTTP_EP = "http://127.0.0.1:8333"
HTTPS_EP = "https://s3.example.com:9443"

# botocore operation param -> (where it goes, wire name) for our API.
PARAM_MAP = {
    "UploadId": ("query", "uploadId"),
    "PartNumber": ("query", "partNumber"),
    "ResponseContentDisposition": ("query", "response-content-disposition"),
    "ResponseContentType": ("query", "response-content-type"),
    "ContentLength": ("header", "Content-Length"),
    "ContentMD5": ("header", "Content-MD5"),
    "ChecksumSHA256": ("header", "x-amz-checksum-sha256"),
    "ChecksumCRC32C": ("header", "x-amz-checksum-crc32c"),
}
METHODS = {"upload_part": "PUT", "get_object": "GET"}

ESCAPING_KEYS = [
    "plain.txt",
    "with space/and  two spaces.bin",
    "caf\u00e9/\u65e5\u672c\u8a9e.txt",  # café/日本語.txt
    "a+b",
    "dir/sub/file",
    "/leading//double/",
    "tilde~x",
    "eq=amp&pct%20raw%",
    "sub-delims!*'()",
    "mixed \u00e9+/~=&%!*'()\u65e5\u672c",
]


def boto_client(endpoint: str, token: str | None = None) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        aws_session_token=token,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
        ),
    )


@pytest.fixture(scope="module")
def clients() -> dict[tuple[str, str | None], Any]:
    return {(ep, tok): boto_client(ep, tok) for ep in (HTTP_EP, HTTPS_EP) for tok in (None, TOKEN)}


@pytest.fixture
def frozen() -> Iterator[None]:
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        yield


def ours_presign(endpoint: str, token: str | None, op: str, params: dict[str, Any], expires: int) -> str:
    signer = SigV4Signer(Credentials(AK, SK, token), REGION, endpoint)
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    for name, value in params.items():
        if name in ("Bucket", "Key"):
            continue
        where, wire = PARAM_MAP[name]
        (query if where == "query" else headers)[wire] = str(value)
    return signer.presign_url(
        METHODS[op], params["Bucket"], params["Key"],
        query=query, signed_headers=headers, expires_in=expires, now=NOW,
    )  # fmt: skip


UP = {"Bucket": "uploads", "Key": "obj/k", "UploadId": "2~Ab+c/d=", "PartNumber": 7}
# (op, params, X-Amz-SignedHeaders botocore produces)
CASES = [
    ("upload_part", UP, "host"),
    ("upload_part", {**UP, "ContentLength": 5242880}, "content-length;host"),
    ("upload_part", {**UP, "ContentLength": 5, "ChecksumSHA256": "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="},
     "content-length;host;x-amz-checksum-sha256"),
    ("upload_part", {**UP, "ChecksumCRC32C": "yZRlqg=="}, "host;x-amz-checksum-crc32c"),
    ("upload_part", {**UP, "ContentLength": 5, "ContentMD5": "XUFAKrxLKna5cZ2REBfFkg=="},
     "content-length;content-md5;host"),
    # botocore keeps the caller's Params order in the URL query.
    ("upload_part", {"PartNumber": 1, "Bucket": "b", "UploadId": "u", "Key": "k"}, "host"),
    ("get_object", {"Bucket": "b", "Key": "na\u00efve file.txt",
                    "ResponseContentDisposition": "attachment; filename*=UTF-8''na%C3%AFve%20file.txt",
                    "ResponseContentType": "text/plain; charset=utf-8"}, "host"),
    ("get_object", {"Bucket": "b", "Key": "k", "ResponseContentType": "a/b", "ResponseContentDisposition": "inline"},
     "host"),
]  # fmt: skip


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("endpoint", [HTTP_EP, HTTPS_EP])
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
@pytest.mark.parametrize(("op", "params", "signed"), CASES)
def test_presign_matches_botocore(clients, endpoint, token, op, params, signed) -> None:
    expected = clients[endpoint, token].generate_presigned_url(op, Params=params, ExpiresIn=900)
    got = ours_presign(endpoint, token, op, params, 900)
    assert got == expected
    qs = parse_qs(urlsplit(got).query)
    assert qs["X-Amz-SignedHeaders"] == [signed]
    assert ("X-Amz-Security-Token" in qs) == (token is not None)


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_a_batch_of_part_urls_matches_botocore_url_by_url(clients, token) -> None:
    """presign_urls (one sign request's parts) reuses scope, path and encodings: each URL is still botocore's."""
    signer = SigV4Signer(Credentials(AK, SK, token), REGION, HTTP_EP)
    parts = [(n, 5242880 if n < 5 else 17, "yZRlqg==" if n % 2 else None) for n in range(1, 6)]
    requests = [({"uploadId": UP["UploadId"], "partNumber": str(n)},  # botocore keeps its Params order
                 {"Content-Length": str(size), **({"x-amz-checksum-crc32c": crc} if crc else {})})
                for n, size, crc in parts]
    got = signer.presign_urls("PUT", UP["Bucket"], UP["Key"], requests, expires_in=900, now=NOW)
    expected = [clients[HTTP_EP, token].generate_presigned_url("upload_part", ExpiresIn=900, Params={
        **UP, "PartNumber": n, "ContentLength": size, **({"ChecksumCRC32C": crc} if crc else {})})
        for n, size, crc in parts]
    assert got == expected


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("endpoint", [HTTP_EP, HTTPS_EP])
@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_presign_key_escaping_matches_botocore(clients, endpoint, key) -> None:
    for op, params in [
        ("upload_part", {"Bucket": "bkt", "Key": key, "UploadId": "u", "PartNumber": 1, "ContentLength": 1}),
        ("get_object", {"Bucket": "bkt", "Key": key}),
    ]:
        expected = clients[endpoint, TOKEN].generate_presigned_url(op, Params=params, ExpiresIn=3600)
        assert ours_presign(endpoint, TOKEN, op, params, 3600) == expected


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize(
    "endpoint",
    ["https://s3.example.com", "https://s3.example.com:443", "http://S3.Example.COM:80/", "http://h:9000/pre/fix/", "http://[::1]:8333"],
)
def test_presign_endpoint_forms_match_botocore(endpoint) -> None:
    params = {"Bucket": "b", "Key": "k x", "UploadId": "u", "PartNumber": 2, "ContentLength": 9}
    expected = boto_client(endpoint).generate_presigned_url("upload_part", Params=params, ExpiresIn=60)
    assert ours_presign(endpoint, None, "upload_part", params, 60) == expected


def boto_header_auth(url: str, method: str, headers: dict[str, str], token: str | None, data: bytes,
                     sign_payload: bool) -> AWSRequest:
    req = AWSRequest(method=method, url=url, headers=headers, data=data)
    # What a client with s3={'payload_signing_enabled': False} would pass down.
    req.context["client_config"] = Config(s3={"payload_signing_enabled": sign_payload})
    S3SigV4Auth(BotoCredentials(AK, SK, token), "s3", REGION).add_auth(req)
    return req


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("endpoint", [HTTP_EP, HTTPS_EP])
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
@pytest.mark.parametrize("key", ["obj/k", ESCAPING_KEYS[-1]])
@pytest.mark.parametrize("unsigned", [True, False], ids=["unsigned-payload", "sha256-payload"])
def test_sign_headers_matches_botocore(endpoint, token, key, unsigned) -> None:
    body = b"hello world"
    signer = SigV4Signer(Credentials(AK, SK, token), REGION, endpoint)
    query = {"uploadId": "u+/=", "partNumber": "3"}
    headers = {"Content-Length": str(len(body)), "x-amz-checksum-crc32c": "yZRlqg==", "User-Agent": "gw/1"}
    payload = UNSIGNED_PAYLOAD if unsigned else hashlib.sha256(body).hexdigest()

    url = signer.url("bkt", key, query)
    got = signer.sign_headers("PUT", "bkt", key, query=query, headers=headers, payload_sha256=payload, now=NOW)
    req = boto_header_auth(url, "PUT", dict(headers), token, body, sign_payload=not unsigned)

    assert got["authorization"] == req.headers["Authorization"]
    signed = ("content-length;host;x-amz-checksum-crc32c;x-amz-content-sha256;x-amz-date"
              + (";x-amz-security-token" if token else ""))
    assert f"SignedHeaders={signed}," in got["authorization"]
    assert got["x-amz-content-sha256"] == req.headers["X-Amz-Content-SHA256"] == payload
    assert got["x-amz-date"] == req.headers["X-Amz-Date"]
    assert got.get("x-amz-security-token") == req.headers.get("X-Amz-Security-Token")
    assert got["host"] == urlsplit(endpoint).netloc
    assert got["User-Agent"] == "gw/1" and "user-agent" not in got["authorization"]  # sent, never signed


def test_percent_encoding_matches_urllib_quote() -> None:
    # sigv4 uses str.translate tables for speed; they must equal quote().
    samples = [chr(c) for c in range(0x80)] + ["\u00e9", "\u65e5\u672c", "\U0001f600", "\u00ff\u0100", "a b+c/d~e%f"]
    samples.append("".join(chr(c) for c in range(0x800)))
    for s in samples:
        assert sigv4._q(s) == quote(s, safe="-_.~")
        assert sigv4._q_path(s) == quote(s, safe="/~")


def test_url_matches_presigned_prefix() -> None:
    signer = SigV4Signer(Credentials(AK, SK), REGION, HTTP_EP)
    key = ESCAPING_KEYS[-1]
    q = {"uploadId": "a b", "partNumber": "1"}
    presigned = signer.presign_url("PUT", "b", key, query=q, expires_in=60, now=NOW)
    assert presigned.startswith(signer.url("b", key, q) + "&X-Amz-Algorithm=")
    assert signer.url("b", "") == f"{HTTP_EP}/b"


def test_signing_key_derived_once_per_day() -> None:
    sigv4._signing_key.cache_clear()
    signer = SigV4Signer(Credentials(AK, "cache-test-secret"), REGION, HTTP_EP)
    for i in range(50):
        signer.presign_url("GET", "b", f"k{i}", expires_in=60, now=NOW + timedelta(seconds=i))
    assert sigv4._signing_key.cache_info().misses == 1
    # A new signer for the same credentials reuses the shared cache.
    SigV4Signer(Credentials(AK, "cache-test-secret"), REGION, HTTP_EP).presign_url(
        "GET", "b", "k", expires_in=60, now=NOW)
    assert (sigv4._signing_key.cache_info().misses, sigv4._signing_key.cache_info().hits) == (1, 1)
    signer.presign_url("GET", "b", "k", expires_in=60, now=NOW + timedelta(days=1))
    assert sigv4._signing_key.cache_info().misses == 2


def test_aware_and_naive_now_agree() -> None:
    signer = SigV4Signer(Credentials(AK, SK), REGION, HTTP_EP)
    aware = NOW.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=-5)))
    assert signer.presign_url("GET", "b", "k", expires_in=60, now=aware) == signer.presign_url(
        "GET", "b", "k", expires_in=60, now=NOW
    )


@pytest.mark.parametrize("expires", [0, -1, 7 * 24 * 3600 + 1])
def test_expires_bounds(expires: int) -> None:
    signer = SigV4Signer(Credentials(AK, SK), REGION, HTTP_EP)
    with pytest.raises(ValueError):
        signer.presign_url("GET", "b", "k", expires_in=expires)


def test_yarl_must_not_requote() -> None:
    # Documents why callers must use yarl.URL(url, encoded=True) with aiohttp:
    # default yarl parsing rewrites %3D/%26/%21/... in the path and %2F in
    # the query, which changes the canonical request.
    yarl = pytest.importorskip("yarl")
    signer = SigV4Signer(Credentials(AK, SK), REGION, HTTP_EP)
    url = signer.presign_url("PUT", "b", "a=b&c!.txt", query={"uploadId": "x/y"}, expires_in=60, now=NOW)
    assert str(yarl.URL(url, encoded=True)) == url
    assert str(yarl.URL(url)) != url
