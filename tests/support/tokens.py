"""The tests' JWT issuer: every token the tests mint (valid, expired, unsigned, forged) comes from here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from typing import Any

import jwt

SECRET = "test-secret-" + "x" * 40
AUDIENCE = "gateway-tests"
ISSUER = "https://issuer.test"
TUS = {"Tus-Resumable": "1.0.0"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(subject: str = "alice", *, issuer: str = ISSUER, audience: str = AUDIENCE, ttl: int = 600,
           omit: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """The payload of a test token: sub, iss, aud, iat, exp (now + ttl), then `extra`; `omit` drops claims."""
    now = int(time.time())
    payload = {"sub": subject, "iss": issuer, "aud": audience, "iat": now, "exp": now + ttl, **extra}
    for name in omit:
        payload.pop(name, None)
    return payload


def token(subject: str = "alice", *, issuer: str = ISSUER, audience: str = AUDIENCE, ttl: int = 600,
          secret: Any = SECRET, algorithm: str = "HS256", omit: Iterable[str] = (), **extra: Any) -> str:
    """A signed JWT; by default one the test gateways accept (HS256 with SECRET, for ISSUER and AUDIENCE)."""
    payload = claims(subject, issuer=issuer, audience=audience, ttl=ttl, omit=omit, **extra)
    return jwt.encode(payload, secret, algorithm=algorithm)


def unsigned(payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A JWT with an empty signature (alg "none" unless `header` says otherwise)."""
    head = {"alg": "none", "typ": "JWT"} if header is None else header
    return f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(payload).encode())}."


def hs256_with_key(payload: dict[str, Any], key: bytes, **header: Any) -> str:
    """HS256 by hand (PyJWT refuses a PEM as an HMAC secret, which is the point of the attack)."""
    signing_input = (f"{b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT', **header}).encode())}."
                     f"{b64url(json.dumps(payload).encode())}")
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def bearer(subject: str = "alice", **token_options: Any) -> dict[str, str]:
    """Just the Authorization header, with a fresh `token(subject, **token_options)`."""
    return {"Authorization": f"Bearer {token(subject, **token_options)}"}


def auth(subject: str = "alice", **extra: str) -> dict[str, str]:
    """Authorization and Tus-Resumable, plus `extra` headers."""
    return {**bearer(subject), **TUS, **extra}
