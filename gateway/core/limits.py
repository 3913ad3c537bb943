"""The settings the core's rules read: one frozen value built from gateway.config by field name."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.ports import Quota


@dataclass(frozen=True)
class Limits:
    """Each field has the name of the gateway.config setting it comes from (see app.limits_from)."""

    max_upload_size: int
    part_size: int
    upload_ttl: int
    upload_max_age: int
    presign_ttl: int
    download_ttl: int
    sign_batch_max: int
    s3_key_prefix: str
    s3_bucket: str
    complete_timeout: float
    head_reconcile_timeout: float
    reconcile_interval: float
    # A completing upload's lease: renewed while CompleteMultipartUpload runs; once it lapsed this
    # long any instance takes over (docs/architecture.md §3.4).
    completion_retry_after: float
    concat_max_partials: int
    concat_max_streamed: int
    quota: Quota | None = None
    # Bytes a PATCH holds in memory since its last committed boundary (docs/architecture.md §3.3).
    proxy_buffer: int = 16 * 1024 * 1024
