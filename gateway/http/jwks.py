"""An identity provider's signing keys, fetched from its JWKS document (or found through OIDC
discovery) and kept fresh (docs/architecture.md §4.5).

- Keys are parsed by pyjwt (`PyJWK`), each pinned to its algorithm (the JWK's `alg`, else the one its
  type and curve imply); Firebase-style `{kid: "-----BEGIN CERTIFICATE-----..."}` sets are read as
  X.509 certificates.
- The set is cached as the response's `Cache-Control: max-age` says, within [1 min, 1 day].
- A token naming a `kid` the set lacks triggers a refresh, at most once per UNKNOWN_KID_INTERVAL (a token
  arriving sooner waits for it), so a flood of bogus `kid`s cannot hammer the IdP while a key the IdP
  just rotated in works within seconds; concurrent refreshes share one fetch.
- When the IdP is unreachable the last good set stays in use: an IdP outage logs nobody out.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

log = logging.getLogger(__name__)

MIN_TTL, DEFAULT_TTL, MAX_TTL = 60.0, 600.0, 86400.0
UNKNOWN_KID_INTERVAL = 5.0
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
_MAX_AGE = re.compile(r"max-age=(\d+)")


@dataclass(frozen=True)
class SigningKey:
    kid: str | None
    algorithm: str
    key: Any


class IdentityProviderUnavailable(Exception):
    """No key set was ever fetched and the IdP does not answer."""


def parse_key_set(document: Any) -> list[SigningKey]:
    """The usable signing keys of a JWKS document or of a kid -> PEM certificate map."""
    if isinstance(document, dict) and isinstance(document.get("keys"), list):
        keys = []
        for entry in document["keys"]:
            # Symmetric keys have no place in a published set; encryption keys sign nothing.
            if not isinstance(entry, dict) or entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
                continue
            try:
                jwk = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                log.info("skipping a JWKS key (%s): %s", entry.get("kid"), exc)
                continue
            keys.append(SigningKey(entry.get("kid"), jwk.algorithm_name, jwk.key))
        return keys
    if isinstance(document, dict) and all(isinstance(v, str) and "BEGIN CERTIFICATE" in v for v in document.values()):
        return [key for kid, pem in document.items() if (key := _certificate_key(kid, pem)) is not None]
    raise ValueError("neither a JWKS document nor a kid -> X.509 certificate map")


def _certificate_key(kid: str, pem: str) -> SigningKey | None:
    public = x509.load_pem_x509_certificate(pem.encode()).public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return SigningKey(kid, "RS256", public)
    if isinstance(public, ec.EllipticCurvePublicKey):
        algorithm = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(public.curve.name)
        return SigningKey(kid, algorithm, public) if algorithm else None
    if isinstance(public, ed25519.Ed25519PublicKey):
        return SigningKey(kid, "EdDSA", public)
    return None


def _ttl(response: aiohttp.ClientResponse) -> float:
    match = _MAX_AGE.search(response.headers.get("Cache-Control", ""))
    return min(MAX_TTL, max(MIN_TTL, float(match.group(1)))) if match else DEFAULT_TTL


class RemoteKeys:
    """The keys one issuer publishes: at `jwks_urls`, or where its discovery document points."""

    def __init__(self, http: aiohttp.ClientSession, *, jwks_urls: Sequence[str] = (),
                 issuer: str | None = None) -> None:
        if not jwks_urls and not issuer:
            raise ValueError("a JWKS URL or an issuer to discover it from")
        self.http = http
        self.jwks_urls = tuple(jwks_urls)
        self.issuer = issuer
        self.keys: list[SigningKey] = []
        self.fresh_until = 0.0
        self.last_attempt = -UNKNOWN_KID_INTERVAL
        self.fetched = False
        self._refreshing: asyncio.Future[None] | None = None

    async def find(self, kid: str | None) -> list[SigningKey]:
        """The keys a token with this `kid` may be signed with (all keys when it names none)."""
        if time.monotonic() >= self.fresh_until:
            await self.refresh()
        matching = self._matching(kid)
        if not matching and kid is not None:
            # Perhaps a key the IdP rotated in since the last fetch. Refetch, but at most once per
            # interval: a token arriving sooner waits for that one shared fetch instead of failing.
            wait = self.last_attempt + UNKNOWN_KID_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                matching = self._matching(kid)
            if not matching and time.monotonic() - self.last_attempt >= UNKNOWN_KID_INTERVAL:
                await self.refresh()
            matching = self._matching(kid)
        if not self.fetched:
            raise IdentityProviderUnavailable(self.jwks_urls[0] if self.jwks_urls else str(self.issuer))
        return matching

    def _matching(self, kid: str | None) -> list[SigningKey]:
        return [k for k in self.keys if kid is None or k.kid == kid]

    async def refresh(self) -> None:
        """One fetch at a time; callers arriving meanwhile wait for it."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._fetch())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if refreshing.done() and self._refreshing is refreshing:
                self._refreshing = None

    async def _fetch(self) -> None:
        self.last_attempt = time.monotonic()
        try:
            urls = self.jwks_urls or (await self._discover(),)
            keys: list[SigningKey] = []
            ttl = MAX_TTL
            for url in urls:
                document, url_ttl = await self._get_json(url)
                keys.extend(parse_key_set(document))
                ttl = min(ttl, url_ttl)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            # Keep the last good set; ask again after a short pause rather than on every request.
            log.warning("fetching signing keys of %s failed: %r", self.issuer or self.jwks_urls, exc)
            self.fresh_until = time.monotonic() + UNKNOWN_KID_INTERVAL
            return
        self.keys, self.fetched = keys, True
        self.fresh_until = time.monotonic() + ttl

    async def _discover(self) -> str:
        document, _ = await self._get_json(f"{str(self.issuer).rstrip('/')}/.well-known/openid-configuration")
        uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise ValueError("the discovery document has no jwks_uri")
        return uri

    async def _get_json(self, url: str) -> tuple[Any, float]:
        async with self.http.get(url, timeout=FETCH_TIMEOUT, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered {response.status}")
            return await response.json(content_type=None), _ttl(response)
