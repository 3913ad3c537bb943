"""Identity providers: tokens of a real OIDC server (oauth2-mock-server) through discovery and JWKS, key
rotation while uploads run, bogus-kid floods, IdP outages, several issuers, scopes and claim limits."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.config import IssuerSetting
from gateway.http.jwks import UNKNOWN_KID_INTERVAL, parse_key_set
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, running
from tests.support.idp import MockIdP, needs_idp
from tests.support.storage import sha256, stored_bytes
from tests.support.tokens import AUDIENCE, TUS

pytestmark = needs_idp
PART = 5 * MiB
OCTETS = {"Content-Type": "application/offset+octet-stream"}


@pytest.fixture(scope="module")
def idp() -> Iterator[MockIdP]:
    with MockIdP(jwks_max_age=300) as provider:
        yield provider


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **TUS}


def oidc_settings(stack: Any, idp: MockIdP, **overrides: Any) -> Any:
    """The issuer alone: its keys come from OIDC discovery."""
    return make_settings(stack, **{"jwt_secret": "", "jwt_issuer": idp.issuer, "jwt_audience": AUDIENCE, **overrides})


async def create(gw: Gateway, token: str, length: int | None, **headers: str) -> tuple[int, str]:
    extra = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    async with gw.http.post(gw.files(), headers={**bearer(token), **extra, **headers}) as response:
        return response.status, response.headers.get("Location", await response.text())


async def patch(gw: Gateway, token: str, location: str, offset: int, data: bytes, **headers: str) -> int:
    async with gw.http.patch(location, data=data, headers={**bearer(token), **OCTETS,
                                                           "Upload-Offset": str(offset), **headers}) as response:
        return response.status


async def test_oidc_tokens_upload_direct_and_proxy(stack, idp: MockIdP, db, s3) -> None:  # type: ignore[no-untyped-def]
    async with running(oidc_settings(stack, idp)) as gw:
        token = idp.token("alice")
        # Proxy path.
        data = os.urandom(PART + 999)
        status, location = await create(gw, token, len(data), **{"Upload-Part-Size": str(PART)})
        assert status == 201, location
        assert await patch(gw, token, location, 0, data) == 204
        # Direct path: sign, PUT straight to S3, confirm.
        direct = os.urandom(PART + 1234)
        status, direct_location = await create(gw, token, len(direct), **{"Upload-Part-Size": str(PART)})
        assert status == 201
        async with gw.http.post(f"{direct_location}/parts", json={"parts": [1, 2]}, headers=bearer(token)) as r:
            assert r.status == 200, await r.text()
            signed = (await r.json())["parts"]
        for part in signed:
            body = direct[part["offset"]:part["offset"] + part["length"]]
            async with gw.http.put(part["url"], data=body, headers=part["headers"]) as put:
                assert put.status == 200
        async with gw.http.put(f"{direct_location}/parts", json={"parts": [1, 2]}, headers=bearer(token)) as r:
            assert r.status == 204, await r.text()
        for where, content in ((location, data), (direct_location, direct)):
            row = await upload_row(db, where.rsplit("/", 1)[-1])
            assert row["state"] == "completed" and row["owner_iss"] == idp.issuer and row["owner_sub"] == "alice"
            assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(content)


async def test_key_rotation_during_uploads_fails_no_request(stack, idp: MockIdP, db, s3) -> None:  # type: ignore[no-untyped-def]
    async with running(oidc_settings(stack, idp)) as gw:
        old = idp.token("rotating")
        data = os.urandom(3 * PART)
        status, location = await create(gw, old, len(data), **{"Upload-Part-Size": str(PART)})
        assert status == 201
        assert await patch(gw, old, location, 0, data[:PART]) == 204
        rotated = idp.rotate("ES256")
        new = idp.token("rotating")
        assert jwt.get_unverified_header(new)["kid"] == rotated["kid"]
        # The new key works at once (an unknown kid refetches the JWKS); the old token until it expires.
        assert await patch(gw, new, location, PART, data[PART:2 * PART]) == 204
        assert await patch(gw, old, location, 2 * PART, data[2 * PART:]) == 204
        row = await upload_row(db, location.rsplit("/", 1)[-1])
        assert row["state"] == "completed"
        assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


async def test_bogus_kid_flood_fetches_the_jwks_a_handful_of_times(stack, idp: MockIdP) -> None:  # type: ignore[no-untyped-def]
    async with running(oidc_settings(stack, idp)) as gw:
        status, _ = await create(gw, idp.token("flood"), 10)  # keys fetched once
        assert status == 201
        before = idp.stats()["jwks_requests"]
        bogus = [idp.token("flood", kid=f"bogus-{n}") for n in range(300)]
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as flood:

            async def attempt(token: str) -> int:
                async with flood.head(gw.files("/00AAAAAAAAAAAAAAAAAAAAAAAA"), headers=bearer(token)) as response:
                    return response.status

            statuses = await asyncio.gather(*(attempt(t) for t in bogus))
        assert set(statuses) == {401}
        # One fetch per refresh interval at most, whatever the number of bogus kids.
        fetches = idp.stats()["jwks_requests"] - before
        assert fetches <= 1 + (time.monotonic() - started) / UNKNOWN_KID_INTERVAL
        assert fetches <= 3


async def test_an_idp_outage_keeps_the_last_good_keys(stack) -> None:  # type: ignore[no-untyped-def]
    with MockIdP() as idp:
        async with running(oidc_settings(stack, idp)) as gw:
            first, unused = idp.token("outage"), idp.token("outage-2")
            assert (await create(gw, first, 10))[0] == 201
            idp.stop()
            # Not cached as verified yet, but its key is: it still works while the IdP is down.
            assert (await create(gw, unused, 10))[0] == 201


async def test_an_idp_that_never_answered_is_503_not_401(stack) -> None:  # type: ignore[no-untyped-def]
    with MockIdP() as idp:
        token, issuer = idp.token("early"), idp.issuer
    settings = make_settings(stack, jwt_secret="", jwt_issuer=issuer, jwt_audience=AUDIENCE)
    async with (running(settings) as gw,
                gw.http.post(gw.files(), headers={**bearer(token), "Upload-Length": "1"}) as response):
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "identity_unavailable"


async def test_required_scopes(stack, idp: MockIdP) -> None:  # type: ignore[no-untyped-def]
    async with running(oidc_settings(stack, idp, jwt_required_scopes=("upload",))) as gw:
        async with gw.http.post(gw.files(), headers={**bearer(idp.token("s", scope="read")),
                                                     "Upload-Length": "1"}) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "insufficient_scope"
            assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
        assert (await create(gw, idp.token("s", scope="read upload"), 1))[0] == 201
        assert (await create(gw, idp.token("s", scope=None, scp=["upload"]), 1))[0] == 201


async def test_claim_limits_lower_the_global_ones(stack, idp: MockIdP) -> None:  # type: ignore[no-untyped-def]
    settings = oidc_settings(stack, idp, jwt_max_upload_size_claim="upload_max",
                             jwt_max_active_bytes_claim="quota_bytes")
    async with running(settings) as gw:
        small = idp.token("limited", upload_max=10 * MiB, quota_bytes=15 * MiB)
        assert (await create(gw, small, 10 * MiB + 1))[0] == 413
        assert (await create(gw, small, 10 * MiB))[0] == 201
        # The byte quota: 10 MiB are active, 6 more would exceed 15.
        status, body = await create(gw, small, 6 * MiB)
        assert status == 403 and "quota_exceeded" in body
        # A deferred upload keeps the limit of the token that created it.
        status, location = await create(gw, small, None)
        assert status == 201
        async with gw.http.patch(location, data=b"x", headers={**bearer(small), **OCTETS, "Upload-Offset": "0",
                                                               "Upload-Length": str(10 * MiB + 1)}) as response:
            assert response.status == 413
        # A claim can only lower a limit; a token without the claims gets the global ones.
        assert (await create(gw, idp.token("limited-2"), 10 * MiB + 1))[0] == 201
        bad = idp.token("limited", upload_max="lots")
        assert (await create(gw, bad, 1))[0] == 401


async def test_audience_in_another_claim_as_cognito_access_tokens(stack, idp: MockIdP) -> None:  # type: ignore[no-untyped-def]
    settings = oidc_settings(stack, idp, jwt_audience="app-client-1", jwt_audience_claim="client_id")
    async with running(settings) as gw:
        assert (await create(gw, idp.token("c", aud=None, client_id="app-client-1"), 1))[0] == 201
        assert (await create(gw, idp.token("c", aud=None, client_id="another-app"), 1))[0] == 401


async def test_several_issuers_each_with_its_keys_and_audience(stack, idp: MockIdP) -> None:  # type: ignore[no-untyped-def]
    with MockIdP(audience="second-api") as second:
        settings = make_settings(stack, jwt_secret="", jwt_audience="", jwt_issuers=(
            IssuerSetting(idp.issuer, AUDIENCE, jwks_urls=(idp.jwks_url,)),
            IssuerSetting(second.issuer, "second-api")))
        async with running(settings) as gw:
            status, location = await create(gw, idp.token("same-name"), 10)
            assert status == 201
            other = second.token("same-name", aud="second-api")
            assert (await create(gw, other, 10))[0] == 201
            # Same subject, other issuer: another owner, who cannot see the first one's upload.
            async with gw.http.head(location, headers=bearer(other)) as response:
                assert response.status == 404
            # Each issuer's own audience: the first's audience is not accepted for the second.
            assert (await create(gw, second.token("x", aud=AUDIENCE), 1))[0] == 401
            # A token claiming an issuer it was not signed by.
            forged = second.token("x", aud=AUDIENCE, iss=idp.issuer)
            assert (await create(gw, forged, 1))[0] == 401


@pytest.mark.parametrize("alg", ["PS256", "EdDSA", "ES256"])
async def test_each_published_algorithm(stack, alg: str) -> None:  # type: ignore[no-untyped-def]
    with MockIdP(alg=alg) as idp:
        async with running(oidc_settings(stack, idp)) as gw:
            token = idp.token("algo")
            assert jwt.get_unverified_header(token)["alg"] == alg
            assert (await create(gw, token, 1))[0] == 201


async def test_none_and_algorithm_confusion_are_refused(stack, idp: MockIdP) -> None:  # type: ignore[no-untyped-def]
    async with running(oidc_settings(stack, idp)) as gw:
        good = idp.token("mallory")
        claims = jwt.decode(good, options={"verify_signature": False})
        kid = jwt.get_unverified_header(good)["kid"]
        unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": kid})
        assert (await create(gw, unsigned, 1))[0] == 401
        # HS256 with the published RSA public key as the HMAC secret.
        jwks = json.loads(await (await gw.http.get(idp.jwks_url)).text())
        public = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid)).key
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        confused = _hs256(claims, pem, kid)
        assert (await create(gw, confused, 1))[0] == 401


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def test_firebase_style_certificate_sets_are_read() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    document = {"kid-1": cert.public_bytes(serialization.Encoding.PEM).decode()}
    [parsed] = parse_key_set(document)
    token = jwt.encode({"sub": "u", "exp": 2**31}, key, algorithm="RS256", headers={"kid": "kid-1"})
    assert parsed.kid == "kid-1" and parsed.algorithm == "RS256"
    assert jwt.decode(token, parsed.key, algorithms=[parsed.algorithm])["sub"] == "u"
