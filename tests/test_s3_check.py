"""`gateway s3 check` against SeaweedFS (set up, not set up, through the CLI) and moto.

Every SeaweedFS test works on a bucket of its own, so the session's `uploads` bucket keeps its
configuration; every run must leave nothing behind under `{prefix}/_check/`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config

from gateway.config import Settings
from gateway.embedded import StackInfo
from gateway.s3.check import (
    PROBES,
    Check,
    Failed,
    NotApplicable,
    Probe,
    Row,
    crc32c,
    exit_status,
    format_table,
    judge_cors,
    judge_expiry,
    judge_lifecycle,
    probe_cors,
    probe_expiry,
    probe_lifecycle,
    run_check,
)
from gateway.s3.setup import apply_bucket_setup, cors_rule, lifecycle_rules
from tests.support.moto import running_moto

DAY = 86400
PREFIX = "media"
ORIGINS = ("https://app.example",)
ROW_NAMES = [p.name for p in PROBES] + ["DeleteObject (cleanup)"]
MOTO_BUCKET = "check"


def settings_for(stack: StackInfo, bucket: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        s3_endpoint_url=stack.s3_endpoint_url, s3_bucket=bucket, s3_region=stack.s3_region,
        s3_access_key_id=stack.s3_access_key_id, s3_secret_access_key=stack.s3_secret_access_key,
        s3_key_prefix=PREFIX, cors_origins=ORIGINS)
    values.update(overrides)
    return Settings(**values)


def fresh_bucket() -> str:
    return f"check-{uuid.uuid4().hex[:12]}"


def marks(rows: Sequence[Row]) -> dict[str, bool | None]:
    return {row.name: row.ok for row in rows}


def assert_nothing_left(s3: Any, bucket: str) -> None:
    prefix = f"{PREFIX}/_check/"
    assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount") == 0
    assert not s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads")


# -- the judgements, without a server -------------------------------------------------------------------


def test_crc32c_known_answer() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the Castagnoli check value


def test_bucket_configuration_judgements() -> None:
    settings = Settings(s3_key_prefix=PREFIX, cors_origins=ORIGINS, upload_max_age=6 * DAY)
    # Someone else's rule that allows at least what browsers need passes; one without PUT does not.
    wide = {"AllowedOrigins": ["https://*.example"], "AllowedMethods": ["GET", "PUT"], "AllowedHeaders": ["*"],
            "ExposeHeaders": ["etag"]}
    assert judge_cors([wide], ORIGINS) == "rule (no id) allows PUT from https://app.example"
    with pytest.raises(Failed, match="no rule allows PUT"):
        judge_cors([{**wide, "AllowedMethods": ["GET"]}, cors_rule(("https://other.example",))], ORIGINS)
    assert judge_cors([cors_rule(())], ORIGINS) == "rule tus-gateway-presigned-parts allows PUT from https://app.example"
    # Lifecycle rules count by content, not ID; a changed GATEWAY_UPLOAD_MAX_AGE needs setup again.
    renamed = [{**rule, "ID": f"ops-{n}"} for n, rule in enumerate(lifecycle_rules(settings))]
    assert judge_lifecycle(renamed, settings).startswith("abort uploads under 'media/' after 8 days")
    with pytest.raises(Failed, match="missing: abort uploads under 'media/' after 12 days"):
        judge_lifecycle(renamed, Settings(s3_key_prefix=PREFIX, upload_max_age=10 * DAY))
    # An abort rule on the whole bucket shorter than the uploads' life is what breaks them.
    short = {"ID": "tidy", "Status": "Enabled", "Filter": {"Prefix": ""},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3}}
    with pytest.raises(Failed, match=r"rule tidy would abort uploads under '' after 3 days, before "
                                     r"GATEWAY_UPLOAD_MAX_AGE \(6 days\)"):
        judge_expiry([*renamed, short], settings)
    assert judge_expiry([*renamed, {**short, "Status": "Disabled"}], settings) == (
        "shortest: rule ops-0, 8 days ≥ GATEWAY_UPLOAD_MAX_AGE (6 days)")
    with pytest.raises(NotApplicable):
        judge_expiry([{**short, "Filter": {"Prefix": "logs/"}}], settings)


async def test_configuration_the_credentials_cannot_read_is_unknown() -> None:
    """With the gateway's own policy (deploy/iam-policy.json) the bucket configuration is not readable."""
    class Denied:
        settings = Settings()

        async def call(self, operation: str, **kwargs: Any) -> Any:
            raise Failed("AccessDenied: Access Denied", operation, "AccessDenied")

    for probe in (probe_cors, probe_lifecycle, probe_expiry):
        with pytest.raises(NotApplicable, match=r"unknown: GetBucket\w+ denied to these credentials"):
            await probe(Denied())  # type: ignore[arg-type]


# -- SeaweedFS ------------------------------------------------------------------------------------------


async def test_seaweedfs_after_setup_passes(stack: StackInfo, s3: Any) -> None:
    bucket = fresh_bucket()
    settings = settings_for(stack, bucket, s3_sse="AES256", s3_storage_class="STANDARD_IA")
    await apply_bucket_setup(settings, create_bucket=True)
    rows = await run_check(settings)
    print(format_table(rows))
    assert [row.name for row in rows] == ROW_NAMES
    assert marks(rows) == {**{name: True for name in ROW_NAMES}, "server defaults": None}
    assert exit_status(rows) == 0
    details = {row.name: row.detail for row in rows}
    assert details["signed Content-Length"] == (
        "a PUT of 1023 bytes to a URL signed for 1024 is refused (403 SignatureDoesNotMatch)")
    assert details["part checksum crc32c"] == (
        "x-amz-checksum-crc32c: right one 200, wrong one 400 BadDigest; completes")
    assert details["bucket CORS"] == "rule tus-gateway-presigned-parts as gateway s3 setup writes it"
    assert details["SSE"] == "HeadObject reports ServerSideEncryption AES256"
    assert details["storage class"] == "HeadObject reports StorageClass STANDARD_IA"
    assert_nothing_left(s3, bucket)


async def test_seaweedfs_without_setup_and_with_a_short_abort_rule(stack: StackInfo, s3: Any) -> None:
    bucket = fresh_bucket()
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "tidy", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2}}]})
    rows = await run_check(settings_for(stack, bucket))
    print(format_table(rows))
    failed = {row.name: row.detail for row in rows if row.ok is False}
    assert set(failed) == {"bucket CORS", "lifecycle rules", "multipart expiry"}
    assert failed["bucket CORS"].endswith("→ browsers cannot PUT parts: run gateway s3 setup")
    assert failed["lifecycle rules"].startswith("missing: abort uploads under 'media/' after 8 days; expire "
                                                "objects under 'media/stash/' after 8 days (the bucket has: ")
    assert failed["multipart expiry"].startswith("rule tidy would abort uploads under '' after 2 days, before "
                                                 "GATEWAY_UPLOAD_MAX_AGE (6 days)")
    assert marks(rows)["SSE"] is None and marks(rows)["storage class"] is None
    assert exit_status(rows) == 1
    assert_nothing_left(s3, bucket)


async def test_cleanup_after_a_failing_probe(stack: StackInfo, s3: Any) -> None:
    bucket = fresh_bucket()
    s3.create_bucket(Bucket=bucket)

    async def messy(c: Check) -> str:
        await c.put_object(c.key("left"), b"x")
        await c.create(c.key("left-upload"))
        raise RuntimeError("probe bug")

    rows = await run_check(settings_for(stack, bucket), [PROBES[0], Probe("messy", messy, "")])
    assert [(row.name, row.ok) for row in rows] == [
        ("bucket", True), ("messy", False), ("DeleteObject (cleanup)", True)]
    assert rows[1].detail == "unexpected RuntimeError('probe bug')"
    assert rows[2].detail.startswith("deleted 1 objects, aborted 1 uploads under media/_check/")
    assert_nothing_left(s3, bucket)


def test_cli_s3_check(stack: StackInfo, s3: Any) -> None:
    """`gateway s3 check` as an operator runs it: GATEWAY_* settings only (defaults otherwise)."""
    bucket = fresh_bucket()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AWS_"))}
    env.update({"GATEWAY_S3_ENDPOINT_URL": stack.s3_endpoint_url, "GATEWAY_S3_BUCKET": bucket,
                "GATEWAY_S3_REGION": stack.s3_region, "GATEWAY_S3_ACCESS_KEY_ID": stack.s3_access_key_id,
                "GATEWAY_S3_SECRET_ACCESS_KEY": stack.s3_secret_access_key, "PYTHONIOENCODING": "utf-8"})
    asyncio.run(apply_bucket_setup(settings_for(stack, bucket, s3_key_prefix="uploads", cors_origins=()),
                                   create_bucket=True))
    gateway = Path(sys.executable).with_name("gateway")
    result = subprocess.run([gateway, "s3", "check"], env=env, capture_output=True, text=True, timeout=120)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["capability", "detail"]
    assert any(line.startswith("✔  CreateMultipartUpload ") for line in lines)
    assert any(line.startswith("✔  DeleteObjects (optional) ") for line in lines)
    assert any(line.startswith("✔  lifecycle rules ") and "under 'uploads/' after 8 days" in line for line in lines)
    assert any(line.startswith("–  SSE ") and line.endswith("GATEWAY_S3_SSE unset") for line in lines)
    assert lines[-1] == "all required capabilities present"
    assert s3.list_objects_v2(Bucket=bucket, Prefix="uploads/_check/").get("KeyCount") == 0

    env["GATEWAY_S3_BUCKET"] = fresh_bucket()  # missing: the first row fails, nothing else runs
    result = subprocess.run([gateway, "s3", "check"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout.splitlines()[1].startswith("✗  bucket ")
    assert "NoSuchBucket" in result.stdout


# -- moto -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_settings() -> Iterator[Settings]:
    """moto's S3 in server mode on 127.0.0.1 with one bucket (no CORS or lifecycle configuration)."""
    with running_moto() as endpoint:
        settings = Settings(s3_endpoint_url=endpoint, s3_bucket=MOTO_BUCKET, s3_key_prefix=PREFIX,
                            s3_access_key_id="testing", s3_secret_access_key="testing")
        botocore.session.get_session().create_client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"})).create_bucket(Bucket=MOTO_BUCKET)
        yield settings


async def test_moto(moto_settings: Settings) -> None:
    rows = await run_check(moto_settings)
    print(format_table(rows))
    assert [row.name for row in rows] == ROW_NAMES
    # As observed with moto 5.2: it verifies no presigned signature, so a PUT whose Content-Length differs
    # from the signed one is stored; and it checks no part checksum (Content-MD5 or x-amz-checksum-*) on
    # UploadPart, so a wrong one is stored too. The bucket has no CORS or lifecycle configuration.
    assert marks(rows) == {
        **{name: True for name in ROW_NAMES},
        "signed Content-Length": False,
        "part checksum md5": False, "part checksum crc32c": False, "part checksum sha256": False,
        "bucket CORS": False, "lifecycle rules": False,
        "multipart expiry": None, "server defaults": None, "SSE": None, "storage class": None,
    }
    details = {row.name: row.detail for row in rows}
    assert details["signed Content-Length"].startswith(
        "a PUT of 1023 bytes to a URL signed for 1024 was accepted (200) → the server ignores signed headers")
    assert details["part checksum sha256"].startswith("a part with a wrong x-amz-checksum-sha256 was accepted (200)")
    assert details["lifecycle rules"].endswith("run gateway s3 setup")
    assert exit_status(rows) == 1
    assert format_table(rows).endswith(
        "6 required capability(ies) missing: signed Content-Length, part checksum md5, part checksum crc32c, "
        "part checksum sha256, bucket CORS, lifecycle rules")
