"""Settings from GATEWAY_* environment variables, parsed and validated once at start-up.

Each setting is declared once, below: its type, default, how its text is parsed (by its type unless
named) and the check its value must pass. A bad value raises ConfigError naming the variable, so the
process stops with a message an operator can act on. Everything else receives a frozen Settings.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.core.model import S3_MAX_PART_SIZE, S3_MIN_PART_SIZE, GiB, MiB

TiB = 1024 * GiB
S3_MAX_OBJECT_SIZE = 5 * TiB
ENV_PREFIX = "GATEWAY_"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


# -- parsers ----------------------------------------------------------------------------------------

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


def _seconds(text: str) -> int:
    return int(parse_duration(text))


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _paths(text: str) -> tuple[Path, ...]:
    paths = tuple(Path(item) for item in _list(text))
    for path in paths:
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
    return paths


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    if text and not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"not an http(s) URL: {text!r}")
    return text


def _urls(text: str) -> tuple[str, ...]:
    return tuple(_url(u) for u in _list(text))


def _base_path(text: str) -> str:
    text = "/" + text.strip().strip("/")
    if not re.match(r"^/[A-Za-z0-9._~/-]+$", text):
        raise ValueError(f"not a URL path: {text!r}")
    return text


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("must be true or false")
    return value in ("1", "true", "yes", "on")


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in choices:
            raise ValueError("must be " + " or ".join(f"'{c}'" for c in choices))
        return text.strip()
    return parse


def _key_prefix(text: str) -> str:
    return text.strip().strip("/")


def _storage_class(text: str) -> str:
    if not re.match(r"^[A-Z][A-Z0-9_]{1,40}$", text.strip()):
        raise ValueError("an S3 storage class, e.g. STANDARD, STANDARD_IA, INTELLIGENT_TIERING")
    return text.strip()


def is_aws_endpoint(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


@dataclass(frozen=True)
class IssuerSetting:
    """One identity provider: tokens whose `iss` is `issuer` are checked with its keys (its JWKS, else
    OIDC discovery) against its audience."""

    issuer: str
    audience: str
    audience_claim: str = "aud"
    jwks_urls: tuple[str, ...] = ()
    owner_claim: str = ""


def _issuers(text: str) -> tuple[IssuerSetting, ...]:
    if text.strip().startswith("@"):
        text = Path(text.strip()[1:]).read_text()
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError('a JSON list of {"issuer", "audience", ...} objects')
    allowed = {f.name for f in fields(IssuerSetting)} | {"jwks_url"}
    issuers = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("issuer"), str) or not entry["issuer"] \
                or not isinstance(entry.get("audience"), str) or not entry["audience"] or set(entry) - allowed:
            raise ValueError(f"each issuer needs a non-empty issuer and audience; keys: {sorted(allowed)}")
        raw: Any = entry.get("jwks_urls", entry.get("jwks_url", ()))
        urls: tuple[str, ...] = (raw,) if isinstance(raw, str) else tuple(raw)
        issuers.append(IssuerSetting(entry["issuer"], entry["audience"], str(entry.get("audience_claim", "aud")),
                                     tuple(_url(u) for u in urls), str(entry.get("owner_claim", ""))))
    return tuple(issuers)


def _default_issuer(s: Settings) -> bool:
    """Whether the flat GATEWAY_JWT_* settings describe an issuer (besides GATEWAY_JWT_ISSUERS)."""
    return bool(s.jwt_secret or s.jwt_public_keys or s.jwt_jwks_urls or s.jwt_issuer)


_BY_TYPE: dict[str, Callable[[str], Any]] = {
    "str": str.strip, "int": lambda text: int(text.strip()), "float": float, "bool": _bool,
    "tuple[str, ...]": _list,
}

Check = Callable[[Any, "Settings"], bool]


def setting(default: Any, parse: Callable[[str], Any] | None = None, check: Check | None = None,
            message: str = "", env: str | None = None) -> Any:
    """One setting: default, parser (else by type), a check of the parsed value against all settings."""
    return field(default=default, metadata={"parse": parse, "check": check, "message": message, "env": env})


def _at_least(low: float, message: str) -> dict[str, Any]:
    return {"check": lambda v, s: v >= low, "message": message}


# -- the settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    db_pool_min: int = setting(2, check=lambda v, s: 1 <= v <= s.db_pool_max,
                               message="must be between 1 and GATEWAY_DB_POOL_MAX")
    db_pool_max: int = 20
    # 0 behind PgBouncer in transaction mode (named prepared statements break there).
    db_statement_cache_size: int = setting(100, **_at_least(0, "must be >= 0"))
    # Empty: AWS's regional endpoint, https://s3.{region}.amazonaws.com.
    s3_endpoint_url: str = setting("", _url)
    s3_public_endpoint_url: str = setting("", _url)
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    # Empty: the standard AWS credential chain (env, profile, web identity, container, IMDS).
    s3_access_key_id: str = setting("", check=lambda v, s: bool(v) == bool(s.s3_secret_access_key),
                                    message="set together with GATEWAY_S3_SECRET_ACCESS_KEY, or neither "
                                            "(then the AWS credential chain is used)")
    s3_secret_access_key: str = ""
    s3_key_prefix: str = setting("uploads", _key_prefix)
    # auto: virtual-hosted on AWS endpoints for DNS-compatible bucket names, path-style elsewhere.
    s3_addressing_style: str = setting("auto", _one_of("auto", "path", "virtual"))
    s3_accelerate: bool = setting(False, check=lambda v, s: not v or is_aws_endpoint(s.presign_endpoint_url),
                                  message="S3 Transfer Acceleration exists on AWS endpoints only")
    s3_sse: str = setting("", _one_of("AES256", "aws:kms"))
    s3_sse_kms_key_id: str = setting("", check=lambda v, s: not v or s.s3_sse == "aws:kms",
                                     message="needs GATEWAY_S3_SSE=aws:kms")
    s3_storage_class: str = setting("", _storage_class)
    host: str = "127.0.0.1"
    port: int = setting(8080, check=lambda v, s: 0 < v < 65536, message="must be between 1 and 65535")
    # The ops listener (/metrics, /healthz, /readyz) on GATEWAY_HOST; 0 turns it off. Never the API port.
    metrics_port: int = setting(9090, check=lambda v, s: 0 <= v < 65536 and v != s.port,
                                message="must be between 1 and 65535 (0: off) and differ from GATEWAY_PORT")
    base_path: str = setting("/files", _base_path)
    public_url: str = setting("", _url)
    max_upload_size: int = setting(S3_MAX_OBJECT_SIZE, parse_size, lambda v, s: 0 < v <= S3_MAX_OBJECT_SIZE,
                                   "must be between 1 byte and 5TiB")
    part_size: int = setting(16 * MiB, parse_size, lambda v, s: S3_MIN_PART_SIZE <= v <= S3_MAX_PART_SIZE,
                             "must be between 5MiB and 5GiB (S3 limits)")
    upload_ttl: int = setting(24 * 3600, _seconds, **_at_least(60, "must be at least 60 seconds"))
    upload_max_age: int = setting(6 * 24 * 3600, _seconds, lambda v, s: v >= s.upload_ttl,
                                  "must be at least GATEWAY_UPLOAD_TTL")
    presign_ttl: int = setting(15 * 60, _seconds, lambda v, s: 60 <= v <= 7 * 86400,
                               "must be between 1 minute and 7 days (SigV4 limit)")
    download_ttl: int = setting(5 * 60, _seconds, lambda v, s: 1 <= v <= 300,
                                "must be between 1 second and 5 minutes")
    sign_batch_max: int = setting(1000, check=lambda v, s: 1 <= v <= 1000, message="must be between 1 and 1000")
    jwt_secret: str = setting("", check=lambda v, s: s.auth != "jwt" or (
        bool(v or s.jwt_public_keys or s.jwt_jwks_urls or s.jwt_issuer or s.jwt_issuers)
        and (not v or len(v.encode()) >= 32)),
        message="set GATEWAY_JWT_SECRET (at least 32 bytes, HS256), GATEWAY_JWT_PUBLIC_KEY, GATEWAY_JWT_JWKS_URL, "
                "GATEWAY_JWT_ISSUER (OIDC discovery) or GATEWAY_JWT_ISSUERS (or GATEWAY_AUTH=none to disable auth)")
    jwt_public_keys: tuple[Path, ...] = setting((), _paths, env="JWT_PUBLIC_KEY")
    # JWKS documents of the issuer below (comma-separated); unset with an issuer: OIDC discovery.
    jwt_jwks_urls: tuple[str, ...] = setting((), _urls, env="JWT_JWKS_URL")
    jwt_audience: str = setting("", check=lambda v, s: s.auth != "jwt" or bool(v) or not _default_issuer(s),
                                message="is required when GATEWAY_AUTH=jwt")
    # The claim holding the audience: `aud`, or e.g. `client_id` for Cognito access tokens.
    jwt_audience_claim: str = "aud"
    jwt_issuer: str = ""
    # More issuers, each with its own keys and audience: a JSON list, inline or `@/path/to/file.json`.
    jwt_issuers: tuple[IssuerSetting, ...] = setting((), _issuers)
    jwt_leeway: float = setting(30.0, parse_duration, lambda v, s: 0 <= v <= 300, "must be between 0 and 5 minutes")
    # The claim that names the owner; the owner is (iss, this claim).
    jwt_owner_claim: str = "sub"
    # Space-separated scopes every request's token needs (in `scope` or `scp`).
    jwt_required_scopes: tuple[str, ...] = setting((), lambda text: tuple(text.split()))
    # Claims that lower the global limits for one token (integers, bytes), e.g. `upload_max_size`.
    jwt_max_upload_size_claim: str = ""
    jwt_max_active_bytes_claim: str = ""
    auth: str = setting("jwt", _one_of("jwt", "none"))
    cors_origins: tuple[str, ...] = ()
    complete_timeout: float = setting(20.0, parse_duration)
    # The completion lease (renewed while CompleteMultipartUpload runs); lapsed this long, any instance
    # takes over.
    completion_retry_after: float = setting(6.0, parse_duration, lambda v, s: v >= 1, "must be at least 1 second")
    max_active_uploads_per_owner: int = setting(1000, **_at_least(1, "must be at least 1"))
    max_active_bytes_per_owner: int = setting(20 * TiB, parse_size)
    # tus concatenation: partial uploads per final, and bytes of small partials streamed through the
    # gateway (larger pieces are copied inside S3) per final.
    concat_max_partials: int = setting(100, check=lambda v, s: 1 <= v <= 10_000, message="must be between 1 and 10000")
    concat_max_streamed: int = setting(64 * MiB, parse_size)
    sweep_interval: float = setting(60.0, parse_duration)
    tombstone_days: int = setting(30, **_at_least(1, "must be at least 1 (tus clients need tombstones to resume)"))
    # An S3 multipart upload under the prefix with no live row is aborted after this long.
    orphan_grace: float = setting(3600.0, parse_duration)
    webhook_urls: tuple[str, ...] = setting((), _urls)
    webhook_secret: str = setting("", check=lambda v, s: not s.webhook_urls or len(v.encode()) >= 32,
                                  message="must be at least 32 bytes when GATEWAY_WEBHOOK_URLS is set")
    pre_create_hook_url: str = setting("", _url)
    hook_timeout: float = setting(5.0, parse_duration)
    # On SIGTERM: stop accepting, let in-flight requests (a PATCH streaming a part) finish this long.
    shutdown_timeout: float = setting(30.0, parse_duration)
    # Per owner and process: sign/confirm/list requests per second (429 beyond), HEADs per second (423).
    rate_limit_parts: float = 50.0
    rate_limit_head: float = 20.0
    access_log: bool = True
    # uvloop (libuv) is about a third cheaper per request than asyncio's own loop; `asyncio` to opt out.
    event_loop: str = setting("uvloop", _one_of("uvloop", "asyncio"))
    log_format: str = setting("json", _one_of("json", "text"))
    # Serve the browser demo page at / (gateway dev turns it on).
    demo_page: bool = False
    # A PATCH body that sends nothing for this long is cut (a half-open mobile connection).
    body_idle_timeout: float = setting(45.0, parse_duration)
    # Bytes of a PATCH held in memory since its last committed boundary, saved as a stash segment when
    # the body breaks (docs/architecture.md §3.3): the most a drop can lose, and memory per connection.
    proxy_buffer: int = setting(16 * MiB, parse_size, lambda v, s: MiB <= v <= 64 * MiB,
                                "must be between 1MiB and 64MiB")
    # Connections, per process and listener (gateway/http/connections.py): a request head must arrive
    # whole this long after its first byte; a connection without a request is closed after the keep-alive
    # timeout (keep it above the load balancer's idle timeout, so the balancer closes first); connections
    # beyond the maximum are closed at accept.
    header_timeout: float = setting(30.0, parse_duration, lambda v, s: v > 0, "must be more than 0")
    keepalive_timeout: float = setting(75.0, parse_duration, lambda v, s: v > 0, "must be more than 0")
    max_connections: int = setting(4096, **_at_least(1, "must be at least 1"))
    head_reconcile_timeout: float = setting(1.5, parse_duration)
    reconcile_interval: float = setting(3.0, parse_duration)

    @property
    def s3_endpoint(self) -> str:
        """The S3 endpoint the gateway calls."""
        return self.s3_endpoint_url or f"https://s3.{self.s3_region}.amazonaws.com"

    @property
    def presign_endpoint_url(self) -> str:
        """The S3 endpoint clients reach; the host is part of every signature."""
        return self.s3_public_endpoint_url or self.s3_endpoint

    def require_services(self) -> None:
        """`gateway serve` needs real database and S3 settings; dev and tests fill them in."""
        for name in ("database_url", "s3_bucket"):
            if not getattr(self, name):
                raise ConfigError(f"{env_name(name)} is required")


# -- loading ----------------------------------------------------------------------------------------


def env_name(field_name: str) -> str:
    declared = next((f.metadata.get("env") for f in fields(Settings) if f.name == field_name), None)
    return ENV_PREFIX + (declared or field_name.upper())


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
        parse = f.metadata.get("parse") or _BY_TYPE[str(f.type)]
        try:
            values[f.name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    values.update(overrides)
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    for f in fields(Settings):
        check = f.metadata.get("check")
        if check is not None and not check(getattr(settings, f.name), settings):
            raise ConfigError(f"{env_name(f.name)}: {f.metadata['message']}")

