"""`gateway s3 setup` against SeaweedFS: CORS and lifecycle rules applied, idempotently.

Each test works on a bucket of its own: the session's `uploads` bucket keeps the CORS configuration the
other tests (browsers, stock clients) expect.
"""

from __future__ import annotations

import http.client
import os
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from gateway.cli import build_parser
from gateway.config import Settings
from gateway.embedded import StackInfo
from gateway.s3.setup import (
    ABORT_RULE_ID,
    CORS_RULE_ID,
    STASH_RULE_ID,
    SetupError,
    apply_bucket_setup,
    cors_rule,
    lifecycle_days,
    lifecycle_rules,
)

DAY = 86400
ORIGINS = ("https://app.example", "https://admin.example")


def settings_for(stack: StackInfo, bucket: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        s3_endpoint_url=stack.s3_endpoint_url, s3_bucket=bucket, s3_region=stack.s3_region,
        s3_access_key_id=stack.s3_access_key_id, s3_secret_access_key=stack.s3_secret_access_key,
        s3_key_prefix="media", cors_origins=ORIGINS, upload_max_age=6 * DAY + 1,
    )
    values.update(overrides)
    return Settings(**values)


def fresh_bucket() -> str:
    return f"setup-{uuid.uuid4().hex[:12]}"


def bucket_config(s3: Any, bucket: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cors = s3.get_bucket_cors(Bucket=bucket)["CORSRules"]
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    return cors, lifecycle


def preflight(endpoint: str, bucket: str, origin: str, headers: str) -> dict[str, str]:
    """A browser's preflight before PUTting a presigned part; the Access-Control-* answer headers."""
    conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=5)
    try:
        conn.request("OPTIONS", f"/{bucket}/media/ab/some-upload?partNumber=1&uploadId=x", headers={
            "Origin": origin, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": headers})
        response = conn.getresponse()
        response.read()
        return {k.lower(): v for k, v in response.getheaders() if k.lower().startswith("access-control-")}
    finally:
        conn.close()


def test_rules_follow_the_settings() -> None:
    assert lifecycle_days(Settings(upload_max_age=6 * DAY)) == 8
    assert lifecycle_days(Settings(upload_max_age=6 * DAY + 1)) == 9
    assert lifecycle_days(Settings(upload_max_age=3600)) == 3
    assert cors_rule(Settings().cors_origins)["AllowedOrigins"] == ["*"]  # GATEWAY_CORS_ORIGINS unset
    assert cors_rule(Settings(cors_origins=ORIGINS).cors_origins)["AllowedOrigins"] == list(ORIGINS)
    abort, stash = lifecycle_rules(Settings(s3_key_prefix=""))
    assert abort["Filter"] == {"Prefix": ""} and stash["Filter"] == {"Prefix": "stash/"}
    abort, stash = lifecycle_rules(Settings(s3_key_prefix="a/b"))
    assert abort["Filter"] == {"Prefix": "a/b/"} and stash["Filter"] == {"Prefix": "a/b/stash/"}


async def test_setup_creates_bucket_and_applies_rules_idempotently(stack: StackInfo, s3: Any) -> None:
    bucket = fresh_bucket()
    settings = settings_for(stack, bucket)
    first = await apply_bucket_setup(settings, create_bucket=True)
    assert first.bucket_created
    cors, lifecycle = bucket_config(s3, bucket)
    assert cors == [{
        "ID": CORS_RULE_ID,
        "AllowedOrigins": list(ORIGINS),
        "AllowedMethods": ["PUT", "GET", "HEAD"],
        "AllowedHeaders": ["content-type", "content-md5", "x-amz-checksum-*"],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 3600,
    }]
    # upload_max_age of 6 days and 1 s: ceil -> 7 days, + 2.
    assert lifecycle == [
        {"ID": ABORT_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": "media/"},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 9}},
        {"ID": STASH_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": "media/stash/"},
         "Expiration": {"Days": 9}},
    ]

    second = await apply_bucket_setup(settings, create_bucket=True)
    assert not second.bucket_created
    assert bucket_config(s3, bucket) == (cors, lifecycle)
    assert second.describe()[1:] == first.describe()[1:]


async def test_setup_replaces_its_own_rules_and_keeps_others(stack: StackInfo, s3: Any) -> None:
    bucket = fresh_bucket()
    s3.create_bucket(Bucket=bucket)
    foreign_cors = {"ID": "reports", "AllowedOrigins": ["https://reports.example"], "AllowedMethods": ["GET"],
                    "MaxAgeSeconds": 60}
    foreign_rule = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [foreign_cors]})
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [foreign_rule]})

    await apply_bucket_setup(settings_for(stack, bucket, upload_max_age=10 * DAY))
    # A changed setting replaces the gateway's rules (found by ID) instead of adding more.
    result = await apply_bucket_setup(settings_for(stack, bucket, upload_max_age=2 * DAY, cors_origins=()))
    cors, lifecycle = bucket_config(s3, bucket)
    assert [r.get("ID") for r in cors] == [CORS_RULE_ID, "reports"]
    assert cors[0]["AllowedOrigins"] == ["*"] and cors[1] == foreign_cors
    assert [r["ID"] for r in lifecycle] == [ABORT_RULE_ID, STASH_RULE_ID, "logs"]
    assert lifecycle[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 4}
    assert lifecycle[1]["Expiration"] == {"Days": 4}
    assert lifecycle[2] == foreign_rule
    assert "kept 1 other lifecycle rule(s): logs" in result.describe()


async def test_missing_bucket_is_created_only_when_asked(stack: StackInfo, s3: Any) -> None:
    bucket = fresh_bucket()
    with pytest.raises(SetupError, match="does not exist"):
        await apply_bucket_setup(settings_for(stack, bucket))
    with pytest.raises(ClientError):
        s3.head_bucket(Bucket=bucket)


async def test_browser_preflight_after_setup(stack: StackInfo) -> None:
    """docs/architecture.md: a PUT with content-type and an x-amz checksum passes the preflight,
    from our origins only."""
    bucket = fresh_bucket()
    await apply_bucket_setup(settings_for(stack, bucket), create_bucket=True)
    allowed = preflight(stack.s3_endpoint_url, bucket, "https://app.example", "content-type,x-amz-checksum-sha256")
    assert allowed["access-control-allow-origin"] == "https://app.example"
    assert "PUT" in allowed["access-control-allow-methods"]
    assert "x-amz-checksum-sha256" in allowed["access-control-allow-headers"].lower()
    assert allowed["access-control-expose-headers"] == "ETag"
    assert "access-control-allow-origin" not in preflight(stack.s3_endpoint_url, bucket, "https://evil.example",
                                                          "content-type")
    # A header outside the list is not allowed (SeaweedFS answers without Allow-Headers).
    assert "access-control-allow-headers" not in preflight(stack.s3_endpoint_url, bucket, "https://app.example",
                                                           "content-type,x-other")


def test_cli_s3_setup(stack: StackInfo, s3: Any, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway s3 setup --create-bucket` with the gateway's own GATEWAY_* settings (defaults otherwise)."""
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    bucket = fresh_bucket()
    for name, value in {"GATEWAY_S3_ENDPOINT_URL": stack.s3_endpoint_url, "GATEWAY_S3_BUCKET": bucket,
                        "GATEWAY_S3_REGION": stack.s3_region, "GATEWAY_S3_ACCESS_KEY_ID": stack.s3_access_key_id,
                        "GATEWAY_S3_SECRET_ACCESS_KEY": stack.s3_secret_access_key}.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["s3", "setup", "--create-bucket"])
    args.func(args)
    out = capsys.readouterr().out
    assert f"bucket {bucket}: created" in out
    assert "from *;" in out
    assert "under 'uploads/' 8 days after initiation" in out  # default upload_max_age: 6 days
    assert "under 'uploads/stash/' 8 days after creation" in out
    cors, lifecycle = bucket_config(s3, bucket)
    assert cors[0]["AllowedOrigins"] == ["*"]
    assert lifecycle[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 8}

    args.func(args)
    assert f"bucket {bucket}: exists" in capsys.readouterr().out
    assert bucket_config(s3, bucket) == (cors, lifecycle)

    monkeypatch.setenv("GATEWAY_S3_BUCKET", fresh_bucket())
    args = build_parser().parse_args(["s3", "setup"])
    with pytest.raises(SystemExit, match="does not exist"):
        args.func(args)
