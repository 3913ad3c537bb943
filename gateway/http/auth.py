"""Bearer JWT verification (docs/architecture.md §4.5).

- Issuers: the flat GATEWAY_JWT_* settings describe one (HS256 secret, PEM keys, JWKS URLs or OIDC
  discovery from GATEWAY_JWT_ISSUER); GATEWAY_JWT_ISSUERS adds more, each with its keys and audience. A
  token is checked only against the issuer its `iss` names.
- Every key is pinned to one algorithm; the token header's `alg` must equal it, so `none` and
  HS/RS confusion cannot happen. `exp` and the audience are required (the audience claim is
  configurable: Cognito access tokens carry `client_id`).
- The owner is (iss, the owner claim); required scopes and per-token limits come from claims.
- Verified tokens are remembered until they expire: a client sends the same token with every
  request, and checking a signature costs more than the rest of a HEAD.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.config import Settings
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import NO_ALLOWANCE, Allowance, Owner
from gateway.http.jwks import IdentityProviderUnavailable, RemoteKeys, SigningKey

ANONYMOUS = Owner("", "anonymous")
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Principal:
    owner: Owner
    allowance: Allowance = NO_ALLOWANCE


@dataclass(frozen=True)
class Issuer:
    name: str | None  # the `iss` it accepts; None: any (the flat settings without GATEWAY_JWT_ISSUER)
    audience: str
    audience_claim: str
    owner_claim: str
    keys: tuple[SigningKey, ...] = ()
    remote: RemoteKeys | None = None

    async def candidates(self, kid: str | None) -> list[SigningKey]:
        # Configured keys are few: those the kid names, else all of them in turn.
        static = [k for k in self.keys if k.kid == kid] or list(self.keys)
        return static + (await self.remote.find(kid) if self.remote is not None else [])


def _pem_key(path: Path) -> SigningKey:
    key = load_pem_public_key(path.read_bytes())
    if isinstance(key, rsa.RSAPublicKey):
        algorithm = "RS256"
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        algorithm = "ES256"
    else:
        raise ValueError(f"{path}: only RSA and P-256 EC public keys are supported")
    return SigningKey(path.stem, algorithm, key)


def _issuers(settings: Settings, http: aiohttp.ClientSession | None) -> list[Issuer]:
    def remote(urls: tuple[str, ...], issuer: str | None) -> RemoteKeys | None:
        if http is None or not (urls or issuer):
            return None
        return RemoteKeys(http, jwks_urls=urls, issuer=issuer)

    issuers = []
    if settings.jwt_secret or settings.jwt_public_keys or settings.jwt_jwks_urls or settings.jwt_issuer:
        keys = [_pem_key(p) for p in settings.jwt_public_keys]
        if settings.jwt_secret:
            keys.append(SigningKey(None, "HS256", settings.jwt_secret.encode()))
        # Discovery only when the issuer is the sole key source.
        discover = settings.jwt_issuer if not (keys or settings.jwt_jwks_urls) else None
        issuers.append(Issuer(settings.jwt_issuer or None, settings.jwt_audience, settings.jwt_audience_claim,
                              settings.jwt_owner_claim, tuple(keys), remote(settings.jwt_jwks_urls, discover)))
    for entry in settings.jwt_issuers:
        issuers.append(Issuer(entry.issuer, entry.audience, entry.audience_claim,
                              entry.owner_claim or settings.jwt_owner_claim, (),
                              remote(entry.jwks_urls, None if entry.jwks_urls else entry.issuer)))
    return issuers


def _unauthorized(message: str) -> UploadError:
    return UploadError(ErrorCode.UNAUTHORIZED, message)


def _text_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _unauthorized(f"token has no usable {name!r} claim")
    return value


def _scopes(claims: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for name in ("scope", "scp"):  # OAuth's space-separated string; Entra/Okta also send lists
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return found


def _limit_claim(claims: Mapping[str, Any], name: str) -> int | None:
    if not name or name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _unauthorized(f"the {name!r} claim must be a non-negative integer (bytes)")
    return value


class Authenticator:
    def __init__(self, settings: Settings, http: aiohttp.ClientSession | None = None) -> None:
        self.enabled = settings.auth == "jwt"
        self.leeway = settings.jwt_leeway
        self.required_scopes = set(settings.jwt_required_scopes)
        self.size_claim = settings.jwt_max_upload_size_claim
        self.bytes_claim = settings.jwt_max_active_bytes_claim
        self.issuers = _issuers(settings, http) if self.enabled else []
        self.by_name = {i.name: i for i in self.issuers if i.name is not None}
        self.any_issuer = next((i for i in self.issuers if i.name is None), None)
        self.verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def principal(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return Principal(ANONYMOUS)
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
        issuer, claims = await self._verify(token)
        # PyJWT checked int(exp) is in the future, but takes any size; float() overflows past ~1e308.
        expires = int(claims["exp"])
        if expires > 253_402_300_799:  # 9999-12-31T23:59:59Z
            raise _unauthorized("token exp out of range")
        principal = self._principal(issuer, claims)
        self.verified[token] = (principal, expires + self.leeway)
        if len(self.verified) > CACHE_SIZE:
            self.verified.popitem(last=False)
        return principal

    def _principal(self, issuer: Issuer, claims: dict[str, Any]) -> Principal:
        owner = Owner(claims["iss"] if isinstance(claims.get("iss"), str) else "",
                      _text_claim(claims, issuer.owner_claim))
        if "\x00" in owner.issuer:
            raise _unauthorized("token issuer contains a NUL character")
        missing = self.required_scopes - _scopes(claims)
        if missing:
            raise UploadError(ErrorCode.INSUFFICIENT_SCOPE, f"the token lacks the scope(s) {' '.join(sorted(missing))}")
        allowance = Allowance(max_upload_size=_limit_claim(claims, self.size_claim),
                              max_active_bytes=_limit_claim(claims, self.bytes_claim), claims=claims)
        return Principal(owner, allowance)

    async def _verify(self, token: str) -> tuple[Issuer, dict[str, Any]]:
        if not token.isascii():  # a JWT is base64url; PyJWT fails on other bytes with a non-JWT error
            raise _unauthorized("malformed token")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _unauthorized("malformed token") from None
        name = unverified.get("iss")
        issuer = self.by_name.get(name) if isinstance(name, str) else None
        issuer = issuer or self.any_issuer
        if issuer is None:
            raise _unauthorized("tokens of this issuer are not accepted")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        try:
            keys = await issuer.candidates(kid)
        except IdentityProviderUnavailable:
            raise UploadError(ErrorCode.IDENTITY_UNAVAILABLE, "the identity provider's keys cannot be fetched",
                              retry_after=5) from None
        last: Exception | None = None
        # The key decides the algorithm; a header naming another one is refused, never followed.
        for key in (k for k in keys if k.algorithm == header.get("alg")):
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key.key, algorithms=[key.algorithm], issuer=issuer.name, leeway=self.leeway,
                    audience=issuer.audience if issuer.audience_claim == "aud" else None,
                    options={"require": ["exp"], "verify_aud": issuer.audience_claim == "aud"})
            except jwt.ExpiredSignatureError:
                raise _unauthorized("token expired") from None
            except jwt.PyJWTError as exc:
                last = exc
                continue
            if issuer.audience_claim != "aud" and claims.get(issuer.audience_claim) != issuer.audience:
                raise _unauthorized(f"invalid token: {issuer.audience_claim} does not match")
            return issuer, claims
        raise _unauthorized(f"invalid token: {last or 'no key of this issuer matches it'}")
