"""The mock OIDC identity provider (tests/support/idp.py, tests/idp) does what the gateway tests count on:
real discovery and JWKS, tokens PyJWT verifies, key rotation with overlap, honest request counts."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.support.idp import IdPError, MockIdP, needs_idp
from tests.support.tokens import AUDIENCE

pytestmark = needs_idp


@pytest.fixture
def idp() -> Iterator[MockIdP]:
    with MockIdP(jwks_max_age=120) as provider:
        yield provider


def get_json(url: str) -> tuple[dict[str, Any], Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read()), response.headers


def jwks_client(url: str) -> jwt.PyJWKClient:
    """PyJWT's JWKS client, refetching on every unknown kid (2.15+ waits 30 s between such refetches)."""
    try:
        return jwt.PyJWKClient(url, cooldown_duration=0)
    except TypeError:  # PyJWT before 2.15 has no cooldown
        return jwt.PyJWKClient(url)


def verify(client: jwt.PyJWKClient, token: str, idp: MockIdP, audience: str = AUDIENCE) -> dict[str, Any]:
    key = client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=audience,
                                        issuer=idp.issuer, options={"require": ["exp", "iat", "iss", "sub"]})
    return claims


def test_discovery_jwks_tokens_and_rotation(idp: MockIdP) -> None:
    discovery, _ = get_json(f"{idp.issuer}/.well-known/openid-configuration")
    assert discovery["issuer"] == idp.issuer == f"http://127.0.0.1:{idp.port}"
    assert discovery["jwks_uri"] == idp.jwks_url

    jwks, headers = get_json(idp.jwks_url)
    assert headers["Cache-Control"] == "max-age=120"
    [first] = jwks["keys"]
    assert first["kty"] == "RSA" and first["alg"] == "RS256" and "d" not in first  # public half only

    client = jwks_client(idp.jwks_url)
    before = int(time.time())
    old_token = idp.token("alice", scope=["upload", "read"], exp_in=300, tenant="t1")
    assert jwt.get_unverified_header(old_token)["kid"] == first["kid"]
    claims = verify(client, old_token, idp)
    assert claims["sub"] == "alice" and claims["aud"] == AUDIENCE and claims["iss"] == idp.issuer
    assert claims["scope"] == "upload read" and claims["tenant"] == "t1"
    assert claims["exp"] - claims["iat"] == 300 and abs(claims["iat"] - before) <= 2

    rotated = idp.rotate()
    assert rotated["kid"] != first["kid"] and rotated["kids"] == [first["kid"], rotated["kid"]]
    new_token = idp.token("bob", aud="other-audience")
    assert jwt.get_unverified_header(new_token)["kid"] == rotated["kid"]
    assert verify(client, new_token, idp, audience="other-audience")["sub"] == "bob"  # unknown kid: one refetch
    assert verify(client, old_token, idp)["sub"] == "alice"  # the old key overlaps
    # 1 by hand + PyJWKClient's first fetch + its refetch for the new kid; the discovery document once.
    assert idp.stats() == {"jwks_requests": 3, "discovery_requests": 1}


def test_rotate_to_other_algorithms_and_drop_old_keys(idp: MockIdP) -> None:
    client = jwks_client(idp.jwks_url)
    old_token = idp.token()
    for alg in ("ES256", "PS256", "EdDSA"):
        rotated = idp.rotate(alg, drop_old=True)
        assert rotated["alg"] == alg and rotated["kids"] == [rotated["kid"]]
        [key] = get_json(idp.jwks_url)[0]["keys"]
        assert key["kid"] == rotated["kid"] and key["alg"] == alg

        token = idp.token("carol")
        header = jwt.get_unverified_header(token)
        assert header["alg"] == alg and header["kid"] == rotated["kid"]
        assert verify(client, token, idp)["sub"] == "carol"
        with pytest.raises(jwt.PyJWKClientError):  # its key left the JWKS
            client.get_signing_key_from_jwt(old_token)
        old_token = token
    with pytest.raises(IdPError) as refused:  # no RS256 key left to sign with
        idp.token(alg="RS256")
    assert refused.value.status == 400


def test_token_options_for_negative_tests(idp: MockIdP) -> None:
    client = jwks_client(idp.jwks_url)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(client, idp.token(exp_in=-60), idp)
    unexpiring = idp.token(exp=None, iss="https://someone-else.test")
    assert "exp" not in jwt.decode(unexpiring, options={"verify_signature": False})
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(unexpiring, client.get_signing_key_from_jwt(unexpiring).key, algorithms=["RS256"],
                   audience=AUDIENCE, issuer=idp.issuer)
    bogus = idp.token(kid="no-such-kid")
    assert jwt.get_unverified_header(bogus)["kid"] == "no-such-kid"
    with pytest.raises(jwt.PyJWKClientError):
        client.get_signing_key_from_jwt(bogus)
    no_aud = jwt.decode(idp.token(sub=None, aud=None), options={"verify_signature": False})
    assert "aud" not in no_aud and "sub" not in no_aud
    with pytest.raises(IdPError):
        idp.rotate("HS256")
    assert idp.stats()["discovery_requests"] == 0


def test_stop_ends_the_process() -> None:
    provider = MockIdP(jwks_max_age=-1, alg="ES256").start()
    try:
        assert provider.running
        _, headers = get_json(provider.jwks_url)
        assert headers["Cache-Control"] is None  # a negative max-age sends no Cache-Control
    finally:
        provider.stop()
    assert not provider.running
    provider.stop()  # twice is fine
