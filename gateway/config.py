"""Settings from GATEWAY_* environment variables, parsed and validated once at start-up.

A bad value raises ConfigError naming the variable, so the process stops with a message an
operator can act on. Everything else in the gateway receives a frozen Settings object.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from gateway.core.model import S3_MAX_PART_SIZE, S3_MIN_PART_SIZE, GiB, MiB

TiB = 1024 * GiB
S3_MAX_OBJECT_SIZE = 5 * TiB


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    db_pool_min: int = 2
    db_pool_max: int = 20
    # 0 behind PgBouncer in transaction mode (named prepared statements break there).
    db_statement_cache_size: int = 100
    s3_endpoint_url: str = ""
    s3_public_endpoint_url: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_key_prefix: str = "uploads"
    host: str = "127.0.0.1"
    port: int = 8080
    base_path: str = "/files"
    public_url: str = ""
    max_upload_size: int = S3_MAX_OBJECT_SIZE
    part_size: int = 16 * MiB
    upload_ttl: int = 24 * 3600
    upload_max_age: int = 6 * 24 * 3600
    presign_ttl: int = 15 * 60
    download_ttl: int = 5 * 60
    sign_batch_max: int = 1000
    jwt_secret: str = ""
    jwt_public_keys: tuple[Path, ...] = ()
    jwt_audience: str = ""
    jwt_issuer: str = ""
    auth: str = "jwt"
    cors_origins: tuple[str, ...] = ()
    complete_timeout: float = 20.0
    # A `completing` upload untouched this long is finished by the completion worker of any instance.
    completion_retry_after: float = 120.0
    max_active_uploads_per_owner: int = 1000
    max_active_bytes_per_owner: int = 20 * TiB
    sweep_interval: float = 60.0
    tombstone_days: int = 30
    # An S3 multipart upload under the prefix with no live row is aborted after this long.
    orphan_grace: float = 3600.0
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str = ""
    pre_create_hook_url: str = ""
    hook_timeout: float = 5.0
    # On SIGTERM: stop accepting, let in-flight requests (a PATCH streaming a part) finish this long.
    shutdown_timeout: float = 30.0
    # Per owner and process: sign/confirm/list requests per second (429 beyond), HEADs per second (423).
    rate_limit_parts: float = 50.0
    rate_limit_head: float = 20.0
    access_log: bool = True
    log_format: str = "json"
    # Serve the browser demo page at / (gateway dev turns it on).
    demo_page: bool = False
    # A PATCH body that sends nothing for this long is cut (a half-open mobile connection).
    body_idle_timeout: float = 45.0
    head_reconcile_timeout: float = 1.5
    reconcile_interval: float = 3.0

    @property
    def presign_endpoint_url(self) -> str:
        """The S3 endpoint clients reach; the host is part of every signature."""
        return self.s3_public_endpoint_url or self.s3_endpoint_url

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def require_services(self) -> None:
        """`gateway serve` needs real database and S3 settings; dev and tests fill them in."""
        for name in ("database_url", "s3_endpoint_url", "s3_bucket", "s3_access_key_id", "s3_secret_access_key"):
            if not getattr(self, name):
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} is required")


ENV_PREFIX = "GATEWAY_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G|T)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": 1000**3, "t": TiB, "tib": TiB, "tb": 1000**4,
}


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 1048576, 16MiB, 5GiB)")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 900, 15m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _parse_int(text: str) -> int:
    return int(text.strip())


def _parse_seconds(text: str) -> int:
    return int(parse_duration(text))


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parse_paths(text: str) -> tuple[Path, ...]:
    paths = tuple(Path(item) for item in _parse_list(text))
    for path in paths:
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
    return paths


def _parse_url(text: str) -> str:
    text = text.strip().rstrip("/")
    if text and not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"not an http(s) URL: {text!r}")
    return text


def _parse_base_path(text: str) -> str:
    text = "/" + text.strip().strip("/")
    if not re.match(r"^/[A-Za-z0-9._~/-]+$", text):
        raise ValueError(f"not a URL path: {text!r}")
    return text


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("must be true or false")
    return value in ("1", "true", "yes", "on")


def _parse_log_format(text: str) -> str:
    if text.strip() not in ("json", "text"):
        raise ValueError("must be 'json' or 'text'")
    return text.strip()


def _parse_auth(text: str) -> str:
    if text not in ("jwt", "none"):
        raise ValueError("must be 'jwt' or 'none'")
    return text


_PARSERS: dict[str, Callable[[str], Any]] = {
    "db_pool_min": _parse_int,
    "db_pool_max": _parse_int,
    "db_statement_cache_size": _parse_int,
    "s3_endpoint_url": _parse_url,
    "s3_public_endpoint_url": _parse_url,
    "s3_key_prefix": lambda text: text.strip().strip("/"),
    "port": _parse_int,
    "base_path": _parse_base_path,
    "public_url": _parse_url,
    "max_upload_size": parse_size,
    "part_size": parse_size,
    "upload_ttl": _parse_seconds,
    "upload_max_age": _parse_seconds,
    "presign_ttl": _parse_seconds,
    "download_ttl": _parse_seconds,
    "sign_batch_max": _parse_int,
    "jwt_public_keys": _parse_paths,
    "auth": _parse_auth,
    "demo_page": _parse_bool,
    "shutdown_timeout": parse_duration,
    "rate_limit_parts": float,
    "rate_limit_head": float,
    "access_log": _parse_bool,
    "log_format": _parse_log_format,
    "max_active_uploads_per_owner": _parse_int,
    "max_active_bytes_per_owner": parse_size,
    "sweep_interval": parse_duration,
    "tombstone_days": _parse_int,
    "orphan_grace": parse_duration,
    "webhook_urls": lambda text: tuple(_parse_url(u) for u in _parse_list(text)),
    "pre_create_hook_url": _parse_url,
    "hook_timeout": parse_duration,
    "cors_origins": _parse_list,
    "complete_timeout": parse_duration,
    "completion_retry_after": parse_duration,
    "body_idle_timeout": parse_duration,
    "head_reconcile_timeout": parse_duration,
    "reconcile_interval": parse_duration,
}

# The environment name of each setting, where it is not simply GATEWAY_<FIELD>.
_ENV_NAMES = {"jwt_public_keys": "JWT_PUBLIC_KEY"}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + _ENV_NAMES.get(field_name, field_name.upper())


def known_env_names() -> set[str]:
    return {env_name(f.name) for f in fields(Settings)}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    environ = os.environ if environ is None else environ
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known_env_names())
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = env_name(f.name)
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[f.name] = _PARSERS.get(f.name, str.strip)(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    values.update(overrides)
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    def check(ok: bool, name: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{env_name(name)}: {message}")

    check(0 < s.port < 65536, "port", "must be between 1 and 65535")
    check(S3_MIN_PART_SIZE <= s.part_size <= S3_MAX_PART_SIZE, "part_size", "must be between 5MiB and 5GiB (S3 limits)")
    check(0 < s.max_upload_size <= S3_MAX_OBJECT_SIZE, "max_upload_size", "must be between 1 byte and 5TiB")
    check(s.upload_ttl >= 60, "upload_ttl", "must be at least 60 seconds")
    check(s.upload_max_age >= s.upload_ttl, "upload_max_age", "must be at least GATEWAY_UPLOAD_TTL")
    check(60 <= s.presign_ttl <= 7 * 86400, "presign_ttl", "must be between 1 minute and 7 days (SigV4 limit)")
    check(1 <= s.download_ttl <= 300, "download_ttl", "must be between 1 second and 5 minutes")
    check(1 <= s.sign_batch_max <= 1000, "sign_batch_max", "must be between 1 and 1000")
    check(1 <= s.db_pool_min <= s.db_pool_max, "db_pool_min", "must be between 1 and GATEWAY_DB_POOL_MAX")
    check(s.max_active_uploads_per_owner >= 1, "max_active_uploads_per_owner", "must be at least 1")
    check(s.tombstone_days >= 1, "tombstone_days", "must be at least 1 (tus clients need tombstones to resume)")
    check(not s.webhook_urls or len(s.webhook_secret.encode()) >= 32, "webhook_secret",
          "must be at least 32 bytes when GATEWAY_WEBHOOK_URLS is set")
    check(s.db_statement_cache_size >= 0, "db_statement_cache_size", "must be >= 0")
    if s.auth == "jwt":
        check(bool(s.jwt_secret or s.jwt_public_keys), "jwt_secret",
              "set GATEWAY_JWT_SECRET or GATEWAY_JWT_PUBLIC_KEY (or GATEWAY_AUTH=none to disable auth)")
        check(not s.jwt_secret or len(s.jwt_secret.encode()) >= 32, "jwt_secret",
              "must be at least 32 bytes (HS256)")
        check(bool(s.jwt_audience), "jwt_audience", "is required when GATEWAY_AUTH=jwt")
