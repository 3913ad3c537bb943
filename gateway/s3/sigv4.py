"""Fast AWS Signature V4 signing for S3, path-style or virtual-hosted addressing.

botocore builds an AWSRequest, runs event hooks and re-parses its own URL for
every presigned URL; that costs ~250us per URL (vs ~14us here, see
bench/presign.py). This module does only the cryptographic minimum: the
signing key is derived once per (credentials, date, region, service) and
cached, so each URL costs one SHA-256 of the canonical request and one
HMAC-SHA256 of the string-to-sign. Credentials may rotate (STS): every
signature takes one snapshot of them, so a rotation never mixes keys.

Output is byte-for-byte identical to botocore's ``generate_presigned_url`` /
``S3SigV4Auth`` for the same inputs and clock (see tests/test_sigv4.py), so
the two can be used interchangeably against the same S3 endpoint.
Standard library only.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import urlsplit

__all__ = ["UNSIGNED_PAYLOAD", "Credentials", "SigV4Signer"]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# S3 rejects presigned URLs valid for longer than 7 days.
MAX_EXPIRES = 7 * 24 * 3600

# Headers botocore never signs (hop-by-hop / tracing headers that proxies and
# HTTP clients may add or rewrite); signing them would break verification.
_UNSIGNABLE = frozenset(
    {
        "baggage", "connection", "expect", "keep-alive", "proxy-authenticate",
        "proxy-authorization", "te", "traceparent", "tracestate", "trailer",
        "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
    }
)  # fmt: skip
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    # repr=False: keep secrets out of logs and tracebacks.
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    # When temporary credentials stop working (None: long-lived keys).
    expires_at: datetime | None = None


# Percent-encoding tables, byte -> output. Equivalent to urllib.parse.quote
# (uppercase hex, UTF-8) but ~2-3x faster via one C-level str.translate; quote
# was over half the cost of a presign. tests/test_sigv4.py checks equivalence.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-_.~")
_QUERY_TABLE = {b: chr(b) if chr(b) in _UNRESERVED else f"%{b:02X}" for b in range(256)}
# Keys keep "/" as a separator, like botocore's quote(key, safe="/~") for {Key+}.
_PATH_TABLE = {**_QUERY_TABLE, ord("/"): "/"}


def _q(value: str) -> str:
    """Percent-encode everything except RFC 3986 unreserved chars.

    Same as botocore's ``percent_encode`` (query names/values) and the SigV4
    canonical encoding, so one encoding serves both URL and canonical request.
    """
    # latin-1 maps each UTF-8 byte to the code point of the same value.
    return value.encode().decode("latin-1").translate(_QUERY_TABLE)


def _q_path(value: str) -> str:
    return value.encode().decode("latin-1").translate(_PATH_TABLE)


@functools.lru_cache(maxsize=16)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    # The key only changes daily, so 16 entries covers several credential
    # sets/regions across a midnight rollover; lru_cache is thread-safe.
    k = hmac.digest(f"AWS4{secret}".encode(), date.encode(), "sha256")
    k = hmac.digest(k, region.encode(), "sha256")
    k = hmac.digest(k, service.encode(), "sha256")
    return hmac.digest(k, b"aws4_request", "sha256")


class _Day(NamedTuple):
    """Everything in a signature that only changes at midnight UTC or when the credentials rotate."""

    credentials: Credentials
    date: str  # YYYYMMDD
    scope: str  # date/region/service/aws4_request
    key: bytes  # derived signing key
    credential_q: str  # encoded X-Amz-Credential value


def _trim(value: str) -> str:
    # SigV4 "Trimall": strip and collapse internal whitespace runs.
    return " ".join(str(value).split())


class _Target(NamedTuple):
    """Where a bucket's requests go: URL base, signed Host, path before the key."""

    base: str
    host: str
    path: str


class SigV4Signer:
    """Signs S3 requests for one endpoint/region and the current credentials.

    URLs are path-style, ``{endpoint_url}/{bucket}/{key}``, or virtual-hosted,
    ``{scheme}://{bucket}.{endpoint host}/{key}`` (``virtual_host=True``). The key is
    percent-encoded with ``/`` kept as a separator (like botocore's ``{Key+}``)
    and is not normalised, so ``a//b`` and ``./x`` are sent as-is.

    Query parameters keep the caller's insertion order in the URL (botocore
    keeps its ``Params`` order too); only the canonical request is sorted.

    Note for HTTP clients: pass the returned URL through unmodified (for
    aiohttp use ``yarl.URL(url, encoded=True)``), since re-quoting the path
    or query invalidates the signature.
    """

    def __init__(
        self,
        credentials: Credentials | Callable[[], Credentials],
        region: str,
        endpoint_url: str,
        service: str = "s3",
        *,
        virtual_host: bool = False,
    ) -> None:
        parts = urlsplit(endpoint_url)
        host = parts.hostname  # already lowercase
        if parts.scheme not in _DEFAULT_PORTS or not host:
            raise ValueError(f"endpoint_url must be http(s)://host[:port][/path]: {endpoint_url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"endpoint_url must not have a query or fragment: {endpoint_url!r}")
        # A callable is asked once per signature (rotating credentials).
        self._credentials = credentials if callable(credentials) else (lambda: credentials)
        self.region = region
        self.service = service
        self.virtual_host = virtual_host
        # URL keeps the endpoint as given (botocore keeps an explicit :443);
        # an endpoint path prefix is kept, minus its trailing slash.
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")
        # Signed Host header: lowercase, default port dropped, no userinfo --
        # what HTTP clients actually send (mirrors botocore._host_from_url).
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None and parts.port != _DEFAULT_PORTS[parts.scheme]:
            host = f"{host}:{parts.port}"
        self.host = host
        self._targets: dict[str, _Target] = {}
        # One-slot cache in front of _signing_key, per day and credentials:
        # saves the lookup and re-encoding the credential on every URL.
        # Replacing a tuple attribute is atomic, so no lock is needed.
        self._day: _Day | None = None

    @property
    def credentials(self) -> Credentials:
        return self._credentials()

    # -- public API -------------------------------------------------------

    def url(self, bucket: str, key: str, query: Mapping[str, str] | None = None) -> str:
        """Unsigned URL, encoded exactly like the signed ones."""
        target = self._target(bucket)
        path = self._path(target, key)
        if not query:
            return f"{target.base}{path}"
        return f"{target.base}{path}?" + "&".join(f"{k}={v}" for k, v in _encode(query))

    def presign_url(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        query: Mapping[str, str] | None = None,
        signed_headers: Mapping[str, str] | None = None,
        expires_in: int,
        now: datetime | None = None,
    ) -> str:
        """Query-string (presigned) URL, identical to botocore's.

        ``signed_headers`` (e.g. Content-Length, x-amz-checksum-sha256,
        Content-MD5) are bound into the signature; the client using the URL
        must send them with exactly these values. The payload is unsigned.
        """
        return self.presign_urls(method, bucket, key, [(query or {}, signed_headers or {})],
                                 expires_in=expires_in, now=now)[0]

    def presign_urls(
        self,
        method: str,
        bucket: str,
        key: str,
        requests: Sequence[tuple[Mapping[str, str], Mapping[str, str]]],
        *,
        expires_in: int,
        now: datetime | None = None,
    ) -> list[str]:
        """``presign_url`` for many (query, signed_headers) pairs of one object at one instant (the
        parts of a sign batch): scope, path, credential and auth parameters are worked out once, each
        distinct query value and header set is encoded once, so a further URL costs its canonical
        request, one SHA-256 and one HMAC."""
        if not 1 <= expires_in <= MAX_EXPIRES:
            raise ValueError(f"expires_in must be in 1..{MAX_EXPIRES}, got {expires_in}")
        amz_date, day = self._scope(now)
        target = self._target(bucket)
        path = self._path(target, key)
        creds = day.credentials
        # botocore's order: operation params first, then auth params in this
        # fixed order, then X-Amz-Signature last.
        auth = [("X-Amz-Algorithm", ALGORITHM), ("X-Amz-Credential", day.credential_q),
                ("X-Amz-Date", amz_date), ("X-Amz-Expires", str(int(expires_in)))]
        token = [("X-Amz-Security-Token", _q(creds.session_token))] if creds.session_token else []
        base = f"{target.base}{path}?"
        encoded: dict[str, str] = {}
        header_sets: dict[tuple[tuple[str, str], ...], tuple[str, str]] = {}
        urls = []
        for query, signed_headers in requests:
            params = []
            for name, value in query.items():
                value = str(value)
                if name not in encoded:
                    encoded[name] = _q(name)
                if value not in encoded:
                    encoded[value] = _q(value)
                params.append((encoded[name], encoded[value]))
            header_key = tuple(signed_headers.items())
            if header_key not in header_sets:
                header_sets[header_key] = self._canonical_headers(target, signed_headers)
            names, canonical_headers = header_sets[header_key]
            params += auth
            params.append(("X-Amz-SignedHeaders", _q(names)))
            params += token
            signature = self._signature(
                day, amz_date, method, path, params, canonical_headers, names, UNSIGNED_PAYLOAD
            )
            qs = "&".join(f"{k}={v}" for k, v in params)
            urls.append(f"{base}{qs}&X-Amz-Signature={signature}")
        return urls

    def sign_headers(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        payload_sha256: str = UNSIGNED_PAYLOAD,
        now: datetime | None = None,
    ) -> dict[str, str]:
        """Header-auth (Authorization header) signing, identical to botocore's
        S3SigV4Auth, for streaming a body that is not hashed up front.

        Returns the full header set to send with ``self.url(bucket, key,
        query)``: the caller's ``headers`` plus host, x-amz-date,
        x-amz-content-sha256, [x-amz-security-token] and authorization.
        ``payload_sha256`` is the hex SHA-256 of the body, or UNSIGNED-PAYLOAD
        (S3 only accepts that over TLS or from trusting local endpoints).
        """
        amz_date, day = self._scope(now)
        target = self._target(bucket)
        creds = day.credentials
        ours = {"host": target.host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256}
        if creds.session_token:
            ours["x-amz-security-token"] = creds.session_token
        # Our values win over caller-supplied ones with the same name, as in
        # botocore (which deletes and re-sets them).
        out = {k: v for k, v in (headers or {}).items() if k.lower() not in ours and k.lower() != "authorization"}
        names, canonical_headers = self._canonical_headers(target, {**out, **ours})
        path = self._path(target, key)
        params = _encode(query) if query else []
        signature = self._signature(day, amz_date, method, path, params, canonical_headers, names, payload_sha256)
        out.update(ours)
        out["authorization"] = (
            f"{ALGORITHM} Credential={creds.access_key_id}/{day.scope}, "
            f"SignedHeaders={names}, Signature={signature}"
        )
        return out

    # -- internals --------------------------------------------------------

    def _target(self, bucket: str) -> _Target:
        target = self._targets.get(bucket)
        if target is None:
            if self.virtual_host:
                target = _Target(f"{self._scheme}://{bucket}.{self._netloc}", f"{bucket}.{self.host}", self._prefix)
            else:
                target = _Target(f"{self._scheme}://{self._netloc}", self.host, f"{self._prefix}/{_q(bucket)}")
            self._targets[bucket] = target
        return target

    @staticmethod
    def _path(target: _Target, key: str) -> str:
        # "/" stays a separator in keys; bucket names never contain one. An
        # empty key addresses the bucket itself (botocore: "/bucket", or "/"
        # on a virtual host).
        if not key:
            return target.path or "/"
        return f"{target.path}/{_q_path(key)}"

    def _scope(self, now: datetime | None) -> tuple[str, _Day]:
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is not None:
            now = now.astimezone(UTC)
        # Naive datetimes are taken as UTC (as botocore's clock is).
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        creds = self._credentials()
        day = self._day
        if day is None or day.date != amz_date[:8] or day.credentials is not creds:
            date = amz_date[:8]
            scope = f"{date}/{self.region}/{self.service}/aws4_request"
            key = _signing_key(creds.secret_access_key, date, self.region, self.service)
            day = self._day = _Day(creds, date, scope, key, _q(f"{creds.access_key_id}/{scope}"))
        return amz_date, day

    @staticmethod
    def _canonical_headers(target: _Target, headers: Mapping[str, str]) -> tuple[str, str]:
        """Return (signed header names, canonical header block incl. host)."""
        merged: dict[str, list[str]] = {"host": [target.host]}
        for name, value in headers.items():
            lname = name.strip().lower()
            if lname in _UNSIGNABLE or lname == "host":
                continue
            # Same name in different case: values joined with "," in order,
            # like botocore's HTTPHeaders.get_all.
            merged.setdefault(lname, []).append(_trim(value))
        names = sorted(merged)
        block = "\n".join(f"{n}:{','.join(merged[n])}" for n in names)
        return ";".join(names), block

    def _signature(
        self,
        day: _Day,
        amz_date: str,
        method: str,
        path: str,
        params: list[tuple[str, str]],
        canonical_headers: str,
        names: str,
        payload: str,
    ) -> str:
        # Canonical query: already-encoded pairs sorted by (name, value);
        # encoded strings are ASCII so str order == byte order.
        cq = "&".join(f"{k}={v}" for k, v in sorted(params))
        creq = f"{method.upper()}\n{path}\n{cq}\n{canonical_headers}\n\n{names}\n{payload}"
        creq_hash = hashlib.sha256(creq.encode()).hexdigest()
        sts = f"{ALGORITHM}\n{amz_date}\n{day.scope}\n{creq_hash}"
        return hmac.digest(day.key, sts.encode(), "sha256").hex()


def _encode(query: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(_q(k), _q(str(v))) for k, v in query.items()]
