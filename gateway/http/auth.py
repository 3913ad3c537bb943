"""Bearer JWT verification (docs/architecture.md §4.5): one pinned algorithm per key, `exp` and `aud` required.

The algorithm comes from the configured key, never from the token header, so `none` and HS/RS
confusion cannot happen. Several public keys can be configured for rotation, chosen by `kid`
(the PEM file's stem) or tried in turn when the token names none.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.config import Settings
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import Owner

LEEWAY_SECONDS = 30
ANONYMOUS = Owner("", "anonymous")
# Verified tokens are remembered until they expire: a client sends the same token with every
# request, and checking a signature costs more than the rest of a HEAD.
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    algorithm: str
    key: Any


def _public_key(path: Path) -> VerificationKey:
    key = load_pem_public_key(path.read_bytes())
    if isinstance(key, rsa.RSAPublicKey):
        algorithm = "RS256"
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        algorithm = "ES256"
    else:
        raise ValueError(f"{path}: only RSA and P-256 EC public keys are supported")
    return VerificationKey(path.stem, algorithm, key)


def _unauthorized(message: str) -> UploadError:
    return UploadError(ErrorCode.UNAUTHORIZED, message)


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth == "jwt"
        self.audience = settings.jwt_audience or None
        self.issuer = settings.jwt_issuer or None
        self.keys: list[VerificationKey] = [_public_key(p) for p in settings.jwt_public_keys]
        self.verified: OrderedDict[str, tuple[Owner, float]] = OrderedDict()
        if settings.jwt_secret:
            self.keys.append(VerificationKey("", "HS256", settings.jwt_secret.encode()))

    def owner(self, authorization: str | None) -> Owner:
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise _unauthorized("missing Authorization: Bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("Authorization must be 'Bearer <token>'")
        cached = self.verified.get(token)
        if cached is not None and cached[1] > time.time():
            self.verified.move_to_end(token)
            return cached[0]
        return self._owner(token)

    def _owner(self, token: str) -> Owner:
        claims = self._verify(token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or "\x00" in subject:
            raise _unauthorized("token has no usable subject")
        issuer = claims.get("iss")
        issuer = issuer if isinstance(issuer, str) else ""
        if "\x00" in issuer:
            raise _unauthorized("token issuer contains a NUL character")
        owner = Owner(issuer, subject)
        self.verified[token] = (owner, float(claims["exp"]) + LEEWAY_SECONDS)
        if len(self.verified) > CACHE_SIZE:
            self.verified.popitem(last=False)
        return owner

    def _verify(self, token: str) -> dict[str, Any]:
        if not token.isascii():  # a JWT is base64url; PyJWT fails on other bytes with a non-JWT error
            raise _unauthorized("malformed token")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise _unauthorized("malformed token") from None
        candidates = [k for k in self.keys if k.kid == kid] if kid else []
        last: Exception | None = None
        for key in candidates or self.keys:
            try:
                return jwt.decode(
                    token, key.key, algorithms=[key.algorithm], audience=self.audience, issuer=self.issuer,
                    leeway=LEEWAY_SECONDS, options={"require": ["exp", "sub"]},
                )
            except jwt.ExpiredSignatureError:
                raise _unauthorized("token expired") from None
            except jwt.PyJWTError as exc:
                last = exc
        raise _unauthorized(f"invalid token: {last}")
