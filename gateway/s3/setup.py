"""`gateway s3 setup`: the bucket configuration a deployment needs (docs/architecture.md §7.3).

- CORS, so browsers can PUT presigned parts straight to the bucket: PUT/GET/HEAD from the gateway's
  `GATEWAY_CORS_ORIGINS` (`*` when unset), request headers `content-type` (a Blob's type triggers a
  preflight), `content-md5` and `x-amz-checksum-*`, and `ETag` exposed (clients read it from part PUTs).
- Lifecycle: `AbortIncompleteMultipartUpload` under the key prefix after ceil(upload_max_age in days) + 2
  days (the rule counts from initiation, and an upload lives at most upload_max_age from creation), and
  an expiration rule with the same number of days on `{prefix}/stash/` (stash segments are ordinary
  objects, so the abort rule never removes them).

Idempotent: the gateway's rules are recognised by their IDs and replaced; other rules in the bucket are
kept as they are (PutBucketCors and PutBucketLifecycleConfiguration replace the whole configuration).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gateway.config import Settings
from gateway.s3.client import s3_client

CORS_RULE_ID = "tus-gateway-presigned-parts"
ABORT_RULE_ID = "tus-gateway-abort-incomplete-uploads"
STASH_RULE_ID = "tus-gateway-expire-stash"
CORS_METHODS = ("PUT", "GET", "HEAD")
CORS_ALLOWED_HEADERS = ("content-type", "content-md5", "x-amz-checksum-*")
CORS_EXPOSE_HEADERS = ("ETag",)
CORS_MAX_AGE = 3600
DAY = 86400


class SetupError(Exception):
    """The bucket could not be configured; the message says why."""


def lifecycle_days(settings: Settings) -> int:
    """Longer than any upload's life, with a day to spare for Upload-Expires."""
    return math.ceil(settings.upload_max_age / DAY) + 2


def upload_prefix(settings: Settings) -> str:
    return f"{settings.s3_key_prefix}/" if settings.s3_key_prefix else ""


def stash_prefix(settings: Settings) -> str:
    return f"{upload_prefix(settings)}stash/"


def cors_rule(origins: Sequence[str]) -> dict[str, Any]:
    """The bucket CORS rule for presigned part PUTs; `gateway s3 setup` and the dev stack both use it."""
    return {
        "ID": CORS_RULE_ID,
        "AllowedOrigins": list(origins or ("*",)),
        "AllowedMethods": list(CORS_METHODS),
        "AllowedHeaders": list(CORS_ALLOWED_HEADERS),
        "ExposeHeaders": list(CORS_EXPOSE_HEADERS),
        "MaxAgeSeconds": CORS_MAX_AGE,
    }


def lifecycle_rules(settings: Settings) -> list[dict[str, Any]]:
    days = lifecycle_days(settings)
    return [
        {"ID": ABORT_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": upload_prefix(settings)},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days}},
        {"ID": STASH_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": stash_prefix(settings)},
         "Expiration": {"Days": days}},
    ]


@dataclass(frozen=True)
class SetupResult:
    bucket: str
    bucket_created: bool
    cors_rule: dict[str, Any]
    lifecycle_rules: list[dict[str, Any]]
    other_cors_rules: list[dict[str, Any]] = field(default_factory=list)
    other_lifecycle_rules: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> list[str]:
        cors = self.cors_rule
        abort, stash = self.lifecycle_rules
        lines = [
            f"bucket {self.bucket}: {'created' if self.bucket_created else 'exists'}",
            f"CORS rule {cors['ID']}: {', '.join(cors['AllowedMethods'])} from {', '.join(cors['AllowedOrigins'])}; "
            f"request headers {', '.join(cors['AllowedHeaders'])}; exposes {', '.join(cors['ExposeHeaders'])}; "
            f"preflight cached {cors['MaxAgeSeconds']} s",
            f"lifecycle rule {abort['ID']}: abort incomplete multipart uploads under "
            f"'{abort['Filter']['Prefix']}' {abort['AbortIncompleteMultipartUpload']['DaysAfterInitiation']} days "
            f"after initiation",
            f"lifecycle rule {stash['ID']}: expire objects under '{stash['Filter']['Prefix']}' "
            f"{stash['Expiration']['Days']} days after creation",
        ]
        if self.other_cors_rules:
            lines.append(f"kept {len(self.other_cors_rules)} other CORS rule(s)")
        if self.other_lifecycle_rules:
            lines.append(f"kept {len(self.other_lifecycle_rules)} other lifecycle rule(s): "
                         + ", ".join(str(r.get("ID", "?")) for r in self.other_lifecycle_rules))
        return lines


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _fail(what: str, exc: Exception) -> SetupError:
    detail = f"{_code(exc)}: {exc}" if isinstance(exc, ClientError) else repr(exc)
    return SetupError(f"{what} failed ({detail})")


async def _ensure_bucket(client: Any, settings: Settings, create: bool) -> bool:
    bucket = settings.s3_bucket
    try:
        await client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise _fail(f"HeadBucket {bucket}", exc) from exc
    if not create:
        raise SetupError(f"bucket {bucket} does not exist (pass --create-bucket to create it)")
    extra: dict[str, Any] = {}
    if settings.s3_region and settings.s3_region != "us-east-1":
        extra["CreateBucketConfiguration"] = {"LocationConstraint": settings.s3_region}
    try:
        await client.create_bucket(Bucket=bucket, **extra)
    except ClientError as exc:
        if _code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            # Someone created it meanwhile; whether we own it shows in the next calls.
            return False
        raise _fail(f"CreateBucket {bucket}", exc) from exc
    return True


async def _current(call: Any, missing: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    try:
        response = await call(**kwargs)
    except ClientError as exc:
        if _code(exc) == missing:
            return []
        raise
    return list(response.get(key) or [])


async def apply_bucket_setup(settings: Settings, *, create_bucket: bool = False) -> SetupResult:
    """Create the bucket if asked and missing, then put the CORS and lifecycle configuration."""
    if not settings.s3_bucket:
        raise SetupError("GATEWAY_S3_BUCKET is required")
    bucket = settings.s3_bucket
    cors = cors_rule(settings.cors_origins)
    rules = lifecycle_rules(settings)
    ours = {ABORT_RULE_ID, STASH_RULE_ID}
    async with s3_client(settings) as client:
        try:
            created = await _ensure_bucket(client, settings, create_bucket)
            other_cors = [r for r in await _current(client.get_bucket_cors, "NoSuchCORSConfiguration",
                                                    "CORSRules", Bucket=bucket)
                          if r.get("ID") != CORS_RULE_ID]
            await client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [cors, *other_cors]})
            other_rules = [r for r in await _current(client.get_bucket_lifecycle_configuration,
                                                     "NoSuchLifecycleConfiguration", "Rules", Bucket=bucket)
                           if r.get("ID") not in ours]
            await client.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": [*rules, *other_rules]})
        except ClientError as exc:
            raise _fail(f"configuring bucket {bucket}", exc) from exc
        except (BotoCoreError, OSError) as exc:
            raise _fail(f"reaching S3 at {settings.s3_endpoint_url or 'AWS'}", exc) from exc
    return SetupResult(bucket, created, cors, rules, other_cors, other_rules)
