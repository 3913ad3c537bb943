"""Virtual-hosted and accelerated URLs, and rotating credentials, byte-for-byte as botocore signs them."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import botocore.session
import pytest
from botocore.config import Config

from gateway.config import Settings
from gateway.s3.client import ACCELERATE_ENDPOINT, virtual_hosted
from gateway.s3.sigv4 import Credentials, SigV4Signer

NOW = datetime(2024, 5, 6, 7, 8, 9)
AK, SK, TOKEN = "ASIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZ/token+with=odd&chars"
PART = {"Bucket": "my-bucket", "Key": "uploads/ab/00abc", "UploadId": "2~Ab+c/d=", "PartNumber": 3,
        "ContentLength": 5242880}


def botocore_url(region: str, endpoint: str | None, s3_config: dict[str, Any], token: str | None = TOKEN,
                 params: dict[str, Any] = PART, op: str = "upload_part") -> str:
    client = botocore.session.get_session().create_client(
        "s3", region_name=region, endpoint_url=endpoint, aws_access_key_id=AK, aws_secret_access_key=SK,
        aws_session_token=token, config=Config(signature_version="s3v4", s3=s3_config))
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        return str(client.generate_presigned_url(op, Params=params, ExpiresIn=900))


def our_url(signer: SigV4Signer, params: dict[str, Any] = PART) -> str:
    query = {"uploadId": params["UploadId"], "partNumber": str(params["PartNumber"])}
    return signer.presign_url("PUT", params["Bucket"], params["Key"], query=query,
                              signed_headers={"Content-Length": str(params["ContentLength"])}, expires_in=900, now=NOW)


@pytest.mark.parametrize("region", ["us-east-1", "us-west-2", "eu-central-1"])
@pytest.mark.parametrize("token", [None, TOKEN], ids=["keys", "sts"])
def test_virtual_hosted_urls_match_botocore(region: str, token: str | None) -> None:
    endpoint = f"https://s3.{region}.amazonaws.com"
    signer = SigV4Signer(Credentials(AK, SK, token), region, endpoint, virtual_host=True)
    expected = botocore_url(region, endpoint, {"addressing_style": "virtual"}, token)
    assert our_url(signer) == expected
    assert urlsplit(expected).netloc == f"my-bucket.s3.{region}.amazonaws.com"


def test_virtual_hosted_download_and_bucket_urls_match_botocore() -> None:
    endpoint = "https://s3.us-west-2.amazonaws.com"
    signer = SigV4Signer(Credentials(AK, SK, TOKEN), "us-west-2", endpoint, virtual_host=True)
    params = {"Bucket": "my-bucket", "Key": "caf\u00e9/na\u00efve file.txt", "ResponseContentType": "text/plain"}
    expected = botocore_url("us-west-2", endpoint, {"addressing_style": "virtual"}, params=params, op="get_object")
    got = signer.presign_url("GET", "my-bucket", params["Key"], query={"response-content-type": "text/plain"},
                             expires_in=900, now=NOW)
    assert got == expected
    assert signer.url("my-bucket", "") == "https://my-bucket.s3.us-west-2.amazonaws.com/"


def test_path_style_on_an_aws_endpoint_matches_botocore() -> None:
    endpoint = "https://s3.us-west-2.amazonaws.com"
    signer = SigV4Signer(Credentials(AK, SK, TOKEN), "us-west-2", endpoint)
    assert our_url(signer) == botocore_url("us-west-2", endpoint, {"addressing_style": "path"})


def test_accelerated_part_urls_match_botocore() -> None:
    signer = SigV4Signer(Credentials(AK, SK, TOKEN), "us-west-2", ACCELERATE_ENDPOINT, virtual_host=True)
    expected = botocore_url("us-west-2", None, {"use_accelerate_endpoint": True})
    assert our_url(signer) == expected
    assert urlsplit(expected).netloc == "my-bucket.s3-accelerate.amazonaws.com"


@pytest.mark.parametrize(("style", "endpoint", "bucket", "virtual"), [
    ("auto", "https://s3.us-west-2.amazonaws.com", "my-bucket", True),
    ("auto", "https://s3.us-west-2.amazonaws.com", "my.dotted.bucket", False),  # TLS wildcard breaks on dots
    ("auto", "http://127.0.0.1:8333", "my-bucket", False),  # S3-compatibles rarely have per-bucket DNS
    ("auto", "https://abc.r2.cloudflarestorage.com", "my-bucket", False),
    ("path", "https://s3.us-west-2.amazonaws.com", "my-bucket", False),
    ("virtual", "https://minio.example.com", "my-bucket", True),
])
def test_addressing_style_setting(style: str, endpoint: str, bucket: str, virtual: bool) -> None:
    settings = Settings(s3_addressing_style=style, s3_endpoint_url=endpoint, s3_bucket=bucket)
    assert virtual_hosted(settings, endpoint) is virtual


def test_rotated_credentials_sign_with_the_new_key_at_once() -> None:
    """The signing key cache follows the credentials: a rotation never signs with the old secret."""
    keys = itertools.cycle([Credentials("AKIDONE", "secret-one"), Credentials("AKIDTWO", "secret-two", TOKEN)])
    current = [next(keys)]
    signer = SigV4Signer(lambda: current[0], "us-east-1", "http://127.0.0.1:8333")
    first = parse_qs(urlsplit(our_url(signer)).query)
    current[0] = next(keys)
    second = parse_qs(urlsplit(our_url(signer)).query)
    assert first["X-Amz-Credential"][0].startswith("AKIDONE/") and "X-Amz-Security-Token" not in first
    assert second["X-Amz-Credential"][0].startswith("AKIDTWO/") and second["X-Amz-Security-Token"] == [TOKEN]
    # Same clock and request, so only the credentials can explain a different signature; and it is the
    # one a fresh signer with the new credentials makes.
    fresh = SigV4Signer(current[0], "us-east-1", "http://127.0.0.1:8333")
    assert our_url(signer) == our_url(fresh)
    assert first["X-Amz-Signature"] != second["X-Amz-Signature"]


def test_an_empty_session_token_is_not_sent() -> None:
    signer = SigV4Signer(Credentials(AK, SK, ""), "us-east-1", "http://127.0.0.1:8333")
    assert "X-Amz-Security-Token" not in our_url(signer)
    assert "x-amz-security-token" not in signer.sign_headers("PUT", "b", "k", now=NOW)
