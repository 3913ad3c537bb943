"""Security matrix: what an attacker (or a confused client) observes, and that nothing changes behind it.

- tokens: none, another key, expired, alg=none, RS256 when only HS256 is configured, HS256 forged with
  the configured RSA public key (HS/RS confusion), wrong audience/issuer, missing claims -> 401 with
  `WWW-Authenticate: Bearer` on every endpoint, and Postgres unchanged;
- another owner -> 404 on everything, exactly like an unknown upload, and Postgres and S3 unchanged;
- presigned URLs: tampered signature / partNumber / uploadId / key / X-Amz-Expires, a URL used for
  another part's bytes, more or fewer bytes than signed, a chunked body -> S3 itself refuses, or the
  gateway refuses to count the part; the offset never moves;
- hostile `filename` metadata never reaches the S3 key, HEAD echoes only canonical base64, the download's
  Content-Disposition is one safe header and unsafe types are served as application/octet-stream;
- unknown and SQL-ish ids -> 404; a huge JSON body -> 413; no Tus-Resumable -> 412.

Bugs this matrix found are fixed and pinned here as regression tests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from aiohttp import ClientResponse
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

from tests.support import MiB
from tests.support.db import upload_row
from tests.support.direct import put_part, sign_ok
from tests.support.gateway import Gateway, make_settings, start_gateway, upload_id
from tests.support.threaded import request as raw_request
from tests.support.tokens import TUS, auth, b64url, claims, hs256_with_key, token, unsigned

PART = 5 * MiB
HINT = {"Upload-Part-Size": str(PART)}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


async def error_of(response: ClientResponse) -> dict[str, Any]:
    """The JSON error body every refusal carries (HEAD has none)."""
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = json.loads(await response.read())
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
    return body["error"]


async def snapshot(db, upload: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Everything Postgres holds about one upload."""
    return {
        "upload": dict(await upload_row(db, upload) or {}),
        "parts": [tuple(r) for r in await db.fetch(
            "select * from upload_parts where upload_id = $1 order by number", upload)],
        "stash": [tuple(r) for r in await db.fetch(
            "select * from upload_stash where upload_id = $1 order by seq", upload)],
        "checksums": [tuple(r) for r in await db.fetch(
            "select * from signed_part_checksums where upload_id = $1 order by number", upload)],
        "events": [tuple(r) for r in await db.fetch(
            "select id, type, payload from events where upload_id = $1 order by id", upload)],
    }


async def owner_rows(db, subject: str) -> int:  # type: ignore[no-untyped-def]
    return int(await db.fetchval("select count(*) from uploads where owner_sub = $1", subject))


def s3_parts(s3: Any, row: Any) -> list[tuple[int, int, str]]:
    listed = s3.list_parts(Bucket=row["bucket"], Key=row["s3_key"], UploadId=row["multipart_id"])
    return [(p["PartNumber"], p["Size"], p["ETag"].strip('"')) for p in listed.get("Parts", [])]


async def head_offset(gw: Gateway, location: str, subject: str = "alice") -> int:
    async with gw.http.head(location, headers=auth(subject)) as response:
        assert response.status == 200
        return int(response.headers["Upload-Offset"])


# -- tokens ---------------------------------------------------------------------------------------------

_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = _RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)


def bad_token(kind: str, subject: str = "alice") -> str | None:
    """An Authorization header value the gateway must refuse; None sends no header at all."""
    if kind == "none":
        return None
    if kind == "other-key":
        return f"Bearer {token(subject, secret='another-secret-of-enough-length-' + 'z' * 20)}"
    if kind == "expired":
        return f"Bearer {token(subject, ttl=-120)}"  # past the 30 s leeway
    if kind == "alg-none":
        return f"Bearer {unsigned(claims(subject), {'alg': 'none', 'typ': 'JWT'})}"
    if kind == "alg-None-cased":
        return f"Bearer {unsigned(claims(subject), {'alg': 'None', 'typ': 'JWT'})}"
    if kind == "rs256":
        return f"Bearer {token(subject, secret=_RSA_KEY, algorithm='RS256')}"
    if kind == "wrong-audience":
        return f"Bearer {token(subject, audience='another-service')}"
    if kind == "wrong-issuer":
        return f"Bearer {token(subject, issuer='https://evil.example')}"
    if kind == "no-exp":
        return f"Bearer {token(subject, omit=('exp',))}"
    if kind == "no-sub":
        return f"Bearer {token('')}"
    if kind == "tampered-payload":
        header, _, signature = token(subject).split(".")
        return f"Bearer {header}.{b64url(json.dumps(claims('mallory')).encode())}.{signature}"
    if kind == "basic-scheme":
        return "Basic " + b64(f"{subject}:password")
    if kind == "bearer-empty":
        return "Bearer "
    if kind == "garbage":
        return "Bearer not.a.jwt"
    raise AssertionError(kind)


BAD_TOKENS = ["none", "other-key", "expired", "alg-none", "alg-None-cased", "rs256", "wrong-audience", "wrong-issuer",
              "no-exp", "no-sub", "tampered-payload", "basic-scheme", "bearer-empty", "garbage"]


def endpoints(location: str, files: str) -> list[tuple[str, str, dict[str, str], bytes | None]]:
    """(method, url, extra headers, body) of every authenticated request, aimed at one upload."""
    patch = {**OCTETS, "Upload-Offset": "0"}
    return [
        ("POST", files, {"Upload-Length": "10"}, None),
        ("HEAD", location, {}, None),
        ("PATCH", location, patch, b"x" * 10),
        ("DELETE", location, {}, None),
        ("GET", location, {"Accept": "application/json"}, None),
        ("POST", location, {"X-HTTP-Method-Override": "DELETE"}, None),
        ("POST", f"{location}/parts", {"Content-Type": "application/json"}, b'{"parts": [1]}'),
        ("PUT", f"{location}/parts", {"Content-Type": "application/json"}, b'{"parts": [1]}'),
        ("GET", f"{location}/parts", {}, None),
        ("PUT", f"{location}/parts/1", {}, None),
    ]


@pytest.mark.parametrize("kind", BAD_TOKENS)
async def test_bad_tokens_are_401_everywhere_and_change_nothing(gateway: Gateway, db, kind: str) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(2 * PART, **HINT)
    await sign_ok(gateway, location, [1])
    before = await snapshot(db, upload_id(location))
    uploads_before = (await owner_rows(db, "alice"), await owner_rows(db, "mallory"))
    value = bad_token(kind)
    for method, url, extra, body in endpoints(location, gateway.files()):
        headers = {**TUS, **extra}
        if value is not None:
            headers["Authorization"] = value
        async with gateway.http.request(method, url, headers=headers, data=body) as response:
            assert response.status == 401, (kind, method, url, response.status, await response.read())
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), response.headers
            assert response.headers["Tus-Resumable"] == "1.0.0"
            if method != "HEAD":
                assert (await error_of(response))["code"] == "unauthorized"
    assert await snapshot(db, upload_id(location)) == before
    assert (await owner_rows(db, "alice"), await owner_rows(db, "mallory")) == uploads_before


async def test_hs256_forged_with_the_rsa_public_key_is_401(stack, db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """HS/RS confusion: with an RSA public key configured, an HS256 token whose HMAC key is that public
    key's PEM must not verify (the algorithm comes from the configured key, never from the token)."""
    pem = tmp_path / "main.pem"
    pem.write_bytes(RSA_PUBLIC_PEM)
    async for gw in start_gateway(make_settings(stack, jwt_secret="", jwt_public_keys=(pem,))):
        good = token("rsa-user", secret=_RSA_KEY, algorithm="RS256")
        async with gw.http.post(gw.files(), headers={"Authorization": f"Bearer {good}", **TUS,
                                                     "Upload-Length": "10"}) as response:
            assert response.status == 201  # the key pair itself works
        count = await owner_rows(db, "rsa-user")
        for forged in (hs256_with_key(claims("rsa-user"), RSA_PUBLIC_PEM),
                       hs256_with_key(claims("rsa-user"), RSA_PUBLIC_PEM, kid="main"),
                       hs256_with_key(claims("rsa-user"), RSA_PUBLIC_PEM.strip()),
                       unsigned(claims("rsa-user"), {"alg": "none", "kid": "main"}),
                       token("rsa-user")):  # an HS256 token for a secret this gateway does not have
            async with gw.http.post(gw.files(), headers={"Authorization": f"Bearer {forged}", **TUS,
                                                         "Upload-Length": "10"}) as response:
                assert response.status == 401, forged
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await error_of(response))["code"] == "unauthorized"
        assert await owner_rows(db, "rsa-user") == count


async def test_non_utf8_authorization_is_401(gateway: Gateway) -> None:
    reply = await asyncio.to_thread(raw_request, gateway.url, "POST", "/files",
                                    [("Authorization", "Bearer \xe9\xe9"), ("Tus-Resumable", "1.0.0"),
                                     ("Upload-Length", "10")])
    assert reply.status == 401, reply.body
    assert (reply.header("WWW-Authenticate") or "").startswith("Bearer")


async def test_subject_with_nul_is_not_500(gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {token('a' + chr(0) + 'b')}", **TUS, "Upload-Length": "5"}
    async with gateway.http.post(gateway.files(), headers=headers) as response:
        assert response.status < 500, await response.read()


# -- another owner ----------------------------------------------------------------------------------------


async def test_another_owner_sees_404_and_changes_nothing(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART)
    location = await gateway.create(PART + 10, **HINT)
    part = (await sign_ok(gateway, location, [1]))[1]
    assert await put_part(gateway, part, data) == 200  # in S3, not yet confirmed
    row = await upload_row(db, upload_id(location))
    before = await snapshot(db, upload_id(location))
    listed = s3_parts(s3, row)
    unknown = gateway.files("/00" + "Z" * 24)
    for method, url, extra, body in endpoints(location, gateway.files())[1:]:
        answers = []
        for target in (url, url.replace(location, unknown)):
            async with gateway.http.request(method, target, headers={**auth("mallory"), **extra},
                                            data=body) as response:
                assert response.status == 404, (method, target, response.status, await response.read())
                answers.append((response.status, None if method == "HEAD" else (await error_of(response))["code"]))
        # Another owner's upload is indistinguishable from one that does not exist.
        assert answers[0] == answers[1] == (404, None if method == "HEAD" else "not_found"), answers
    for override in ("PATCH", "HEAD"):
        async with gateway.http.post(location, headers={**auth("mallory"), **OCTETS, "Upload-Offset": "0",
                                                        "X-HTTP-Method-Override": override},
                                     data=b"x") as response:
            assert response.status == 404
    assert await snapshot(db, upload_id(location)) == before
    assert s3_parts(s3, row) == listed  # the multipart upload and its part are untouched
    # The owner carries on as if nothing happened.
    async with gateway.http.put(f"{location}/parts/1", headers=auth()) as response:
        assert response.status == 204 and response.headers["Upload-Offset"] == str(PART)


async def test_another_owner_cannot_download_or_delete_a_finished_upload(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(100)
    async with gateway.http.patch(location, data=b"y" * 100, headers={**auth(), **OCTETS,
                                                                      "Upload-Offset": "0"}) as response:
        assert response.status == 204
    row = await upload_row(db, upload_id(location))
    assert row["state"] == "completed"
    before = await snapshot(db, upload_id(location))
    for method, headers in (("GET", {"Accept": "application/json"}), ("GET", {}), ("DELETE", {}), ("HEAD", {})):
        async with gateway.http.request(method, location, headers={**auth("mallory"), **headers},
                                        allow_redirects=False) as response:
            assert response.status == 404, (method, response.status)
            assert "Location" not in response.headers
    assert await snapshot(db, upload_id(location)) == before
    assert s3.head_object(Bucket=row["bucket"], Key=row["s3_key"])["ContentLength"] == 100


async def test_same_subject_from_another_issuer_is_another_owner(stack, db) -> None:  # type: ignore[no-untyped-def]
    """Without GATEWAY_JWT_ISSUER any issuer's tokens are accepted; the owner is (iss, sub), not sub."""
    async for gw in start_gateway(make_settings(stack, jwt_issuer="")):
        mine = {"Authorization": f"Bearer {token('shared', issuer='https://a.example')}", **TUS}
        theirs = {"Authorization": f"Bearer {token('shared', issuer='https://b.example')}", **TUS}
        async with gw.http.post(gw.files(), headers={**mine, "Upload-Length": "10"}) as response:
            assert response.status == 201
            location = response.headers["Location"]
        before = await snapshot(db, upload_id(location))
        for method in ("HEAD", "GET", "DELETE"):
            async with gw.http.request(method, location, headers=theirs) as response:
                assert response.status == 404, method
        async with gw.http.post(f"{location}/parts", json={"parts": [1]}, headers=theirs) as response:
            assert response.status == 404
        assert await snapshot(db, upload_id(location)) == before
        async with gw.http.head(location, headers=mine) as response:
            assert response.status == 200


# -- presigned URLs -----------------------------------------------------------------------------------------


def tamper(url: str, what: str, other: Any) -> str:
    if what == "signature":
        head, signature = url.rsplit("X-Amz-Signature=", 1)
        flipped = signature[:5] + ("0" if signature[5] != "0" else "1") + signature[6:]
        return f"{head}X-Amz-Signature={flipped}"
    if what == "part-number":
        return url.replace("partNumber=1&", "partNumber=2&")
    if what == "upload-id":
        return re.sub(r"uploadId=[^&]+", "uploadId=" + quote(other["multipart_id"], safe=""), url)
    if what == "key-and-upload-id":
        path = quote(f"/{other['bucket']}/{other['s3_key']}")
        swapped = re.sub(r"^(https?://[^/]+)/[^?]+", lambda m: m.group(1) + path, url)
        return re.sub(r"uploadId=[^&]+", "uploadId=" + quote(other["multipart_id"], safe=""), swapped)
    if what == "expires":
        return re.sub(r"X-Amz-Expires=\d+", "X-Amz-Expires=604800", url)
    if what == "date":  # one second later
        return re.sub(r"(X-Amz-Date=\d{8}T\d{5})(\d)Z", lambda m: f"{m.group(1)}{(int(m.group(2)) + 1) % 10}Z", url)
    if what == "drop-signed-headers":
        return re.sub(r"X-Amz-SignedHeaders=[^&]+", "X-Amz-SignedHeaders=host", url)
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["signature", "part-number", "upload-id", "key-and-upload-id", "expires", "date",
                                  "drop-signed-headers"])
async def test_tampered_presigned_url_is_refused_by_s3(gateway: Gateway, db, s3, what: str) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(PART + 10, **HINT)
    victim = await gateway.create(PART + 10, **HINT)
    row = await upload_row(db, upload_id(location))
    other = await upload_row(db, upload_id(victim))
    part = (await sign_ok(gateway, location, [1]))[1]
    before = await snapshot(db, upload_id(location))
    forged = {**part, "url": tamper(part["url"], what, other)}
    assert forged["url"] != part["url"]
    assert await put_part(gateway, forged, os.urandom(PART)) == 403
    assert s3_parts(s3, row) == [] and s3_parts(s3, other) == []
    async with gateway.http.put(f"{location}/parts/1", headers=auth()) as response:
        assert response.status == 409 and (await error_of(response))["code"] == "part_not_visible"
    assert await snapshot(db, upload_id(location)) == before
    assert await head_offset(gateway, location) == 0
    # The untouched URL still works: it was the tampering S3 refused.
    data = os.urandom(PART)
    assert await put_part(gateway, part, data) == 200
    async with gateway.http.put(f"{location}/parts/1", headers=auth()) as response:
        assert response.status == 204 and response.headers["Upload-Offset"] == str(PART)


async def test_url_for_one_part_used_for_another(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    """The URL pins part number and Content-Length: a different-size part is refused by S3; a same-size one
    is stored, but as the signed part number (S3 cannot tell the bytes apart without a checksum)."""
    data = os.urandom(2 * PART + 10)
    chunks = {1: data[:PART], 2: data[PART:2 * PART], 3: data[2 * PART:]}
    location = await gateway.create(len(data), **HINT)
    row = await upload_row(db, upload_id(location))
    signed = await sign_ok(gateway, location, [1, 2, 3])
    assert await put_part(gateway, signed[1], chunks[3]) == 403  # 10 bytes where 5 MiB are signed
    assert await put_part(gateway, signed[3], chunks[1]) == 403  # 5 MiB where 10 bytes are signed
    assert s3_parts(s3, row) == []
    assert await put_part(gateway, signed[1], chunks[2]) == 200
    assert s3_parts(s3, row) == [(1, PART, hashlib.md5(chunks[2]).hexdigest())]  # stored as part 1
    async with gateway.http.put(f"{location}/parts/2", headers=auth()) as response:
        assert response.status == 409 and (await error_of(response))["code"] == "part_not_visible"
    assert await head_offset(gateway, location) == PART  # HEAD reconciles: S3 holds a full-size part 1


@pytest.mark.parametrize("client_md5", ["signed", "own"])
async def test_url_for_another_part_refused_with_checksums(gateway: Gateway, db, s3, client_md5: str) -> None:  # type: ignore[no-untyped-def]
    """With Upload-Part-Checksum the URL also pins the part's digest: same-size wrong bytes are refused."""
    data = os.urandom(2 * PART)
    first, second = data[:PART], data[PART:]
    md5 = lambda chunk: b64(hashlib.md5(chunk).digest())  # noqa: E731
    location = await gateway.create(len(data), **HINT, **{"Upload-Part-Checksum": "md5"})
    row = await upload_row(db, upload_id(location))
    signed = await sign_ok(gateway, location, [{"number": 1, "checksum": md5(first)},
                                               {"number": 2, "checksum": md5(second)}])
    headers = {"Content-MD5": md5(second)} if client_md5 == "own" else {}
    status = await put_part(gateway, signed[1], second, **headers)
    assert status in (400, 403), status  # BadDigest, or SignatureDoesNotMatch for a different Content-MD5
    assert s3_parts(s3, row) == []
    assert await head_offset(gateway, location) == 0


@pytest.mark.parametrize("size", [PART + 1, PART - 1, 2 * PART])
async def test_wrong_sized_part_is_403(gateway: Gateway, db, s3, size: int) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(2 * PART, **HINT)
    row = await upload_row(db, upload_id(location))
    part = (await sign_ok(gateway, location, [1]))[1]
    assert await put_part(gateway, part, os.urandom(size)) == 403
    assert s3_parts(s3, row) == []
    assert await head_offset(gateway, location) == 0


async def test_chunked_body_to_presigned_url_is_refused(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    """Without Content-Length (chunked) the signed content-length header is missing: S3 refuses, whatever
    the size, so a client cannot stream more (or fewer) bytes than were signed."""
    location = await gateway.create(2 * PART, **HINT)
    row = await upload_row(db, upload_id(location))
    part = (await sign_ok(gateway, location, [1]))[1]

    async def body(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // MiB):
            yield os.urandom(MiB)

    for total in (PART + MiB, PART):
        async with gateway.http.put(URL(part["url"], encoded=True), data=body(total)) as response:
            await response.read()
            assert response.status == 403, total
    assert s3_parts(s3, row) == []
    assert await head_offset(gateway, location) == 0


# -- hostile filenames -----------------------------------------------------------------------------------------

FILENAMES = [
    ("../../etc/passwd", "passwd"),
    ("/absolute/path.txt", "path.txt"),
    ("..\\..\\windows\\win.ini", "win.ini"),
    ("a\r\nSet-Cookie: session=evil\r\n\r\n<script>", "aSet-Cookie: session=evil<script>"),
    ('"quoted"; filename=evil.exe', '"quoted"; filename=evil.exe'),
    ("rapport d'été <1>.pdf", "rapport d'été <1>.pdf"),
    ("名前 テスト.txt", "名前 テスト.txt"),
    ("\u202eexe.txt", "exe.txt"),  # right-to-left override (format character) dropped
    ("tab\there\x7fdel.txt", "tabheredel.txt"),
    ("a;b,c=d.txt", "a;b,c=d.txt"),
    ("%2e%2e%2f.txt", "%2e%2e%2f.txt"),
    ("..", "download"),
    ("\\", "download"),
    ("x" * 1500, "x" * 255),
    ("é" * 600, "é" * 255),
]  # a NUL in a metadata value is refused at creation (tests/test_fuzz.py::test_metadata_value_with_nul_is_400)
DISPOSITION = re.compile(r"attachment; filename=\"([\x20\x21\x23-\x3a\x3c-\x5b\x5d-\x7e]*)\"; "
                         r"filename\*=UTF-8''([A-Za-z0-9%._~!*'()-]*)")


@pytest.mark.parametrize(("name", "served_as"), FILENAMES)
async def test_hostile_filename_never_reaches_the_key_or_a_raw_header(gateway: Gateway, db, s3, name: str,
                                                                      served_as: str) -> None:  # type: ignore[no-untyped-def]
    settings = gateway.settings
    metadata = f"filename {b64(name)},filetype {b64('text/html')}"
    data = os.urandom(100)
    async with gateway.http.post(gateway.files(), headers={**auth(), "Upload-Length": str(len(data)),
                                                           "Upload-Metadata": metadata}) as response:
        assert response.status == 201, await response.read()
        location = response.headers["Location"]
    upload = upload_id(location)
    row = await upload_row(db, upload)
    assert row["s3_key"] == f"{settings.s3_key_prefix}/{upload[2:4]}/{upload}"
    pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=settings.s3_bucket,
                                                                 Prefix=f"{settings.s3_key_prefix}/")
    assert row["s3_key"] in [u["Key"] for page in pages for u in page.get("Uploads", [])]
    # HEAD echoes the canonical base64 form only (what we sent is canonical).
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.headers["Upload-Metadata"] == metadata
        assert re.fullmatch(r"[!-~]+( [A-Za-z0-9+/]*={0,2})?(,[!-+\--~]+( [A-Za-z0-9+/]*={0,2})?)*",
                            response.headers["Upload-Metadata"])
    async with gateway.http.patch(location, data=data, headers={**auth(), **OCTETS, "Upload-Offset": "0"}) as response:
        assert response.status == 204 and response.headers["Upload-Offset"] == "100"
    listing = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"{settings.s3_key_prefix}/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert row["s3_key"] in keys
    assert all(re.fullmatch(rf"{re.escape(settings.s3_key_prefix)}/[A-Za-z0-9_-]{{2}}/00[A-Za-z0-9_-]{{14,62}}", k)
               for k in keys), keys
    stored = s3.head_object(Bucket=settings.s3_bucket, Key=row["s3_key"])
    assert all(0x20 <= ord(ch) < 0x7F for ch in stored["Metadata"].get("filename", "")), stored["Metadata"]
    assert stored["ContentType"] == "application/octet-stream"
    # The download goes through S3 with a presigned GET that names the response headers.
    async with gateway.http.get(location, headers={**auth(), "Accept": "application/json"}) as response:
        assert response.status == 200
        url = (await response.json())["url"]
    async with gateway.http.get(URL(url, encoded=True)) as response:
        assert response.status == 200 and await response.read() == data
        dispositions = response.headers.getall("Content-Disposition")
        assert len(dispositions) == 1, dispositions
        disposition = dispositions[0]
        assert all(0x20 <= ord(ch) < 0x7F for ch in disposition), repr(disposition)
        match = DISPOSITION.fullmatch(disposition)
        assert match, disposition
        fallback, encoded = match.groups()
        assert unquote(encoded) == served_as
        assert len(fallback) == len(served_as) and '"' not in fallback and "\\" not in fallback
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize(("filetype", "served"), [
    ("text/html", "application/octet-stream"),
    ("TEXT/HTML", "application/octet-stream"),
    ("text/html; charset=utf-8", "application/octet-stream"),
    ("image/svg+xml", "application/octet-stream"),
    ("application/xhtml+xml", "application/octet-stream"),
    ("text/javascript", "application/octet-stream"),
    ("text/plain\r\nX-Evil: 1", "application/octet-stream"),
    ("application/pdf", "application/pdf"),
    ("image/png; a=b", "image/png"),
])
async def test_download_content_type_is_safe(gateway: Gateway, filetype: str, served: str) -> None:
    location = await gateway.create(10, **{"Upload-Metadata": f"filetype {b64(filetype)}"})
    async with gateway.http.patch(location, data=b"0123456789", headers={**auth(), **OCTETS,
                                                                        "Upload-Offset": "0"}) as response:
        assert response.status == 204
    async with gateway.http.get(location, headers={**auth(), "Accept": "application/json"}) as response:
        url = (await response.json())["url"]
    async with gateway.http.get(URL(url, encoded=True)) as response:
        assert response.status == 200
        assert response.headers.getall("Content-Type") == [served]
        assert "X-Evil" not in response.headers


# -- ids, bodies, versions ------------------------------------------------------------------------------------

SQLISH_IDS = ["' or 1=1 --", "'; drop table uploads; --", '" OR ""="', "00' OR '1'='1", "1) or (1=1",
              "00aaaaaaaaaaaaaa--or-1-1", "00AAAAAAAAAAAAAA'--", "%' --", "../../etc/passwd", "00\u2019or\u20191",
              "x" * 65, "0" * 15]


@pytest.mark.parametrize("raw_id", ["00" + "A" * 24, "0" * 16, "z" * 64, "00-_-_-_-_-_-_-_-_", *SQLISH_IDS])
async def test_unknown_and_sqlish_ids_are_404(gateway: Gateway, db, raw_id: str) -> None:  # type: ignore[no-untyped-def]
    # (events other than creation/termination may come from the gateway's sweeper, which runs at start-up)
    count_events = "select count(*) from events where type in ('created', 'terminated')"
    total = await db.fetchval("select count(*) from uploads")
    events = await db.fetchval(count_events)
    base = f"{gateway.url}{gateway.settings.base_path}/{quote(raw_id, safe='')}"
    requests = [("HEAD", base, {}, None), ("GET", base, {}, None), ("DELETE", base, {}, None),
                ("PATCH", base, {**OCTETS, "Upload-Offset": "0"}, b"x"),
                ("POST", f"{base}/parts", {}, b'{"parts": [1]}'), ("PUT", f"{base}/parts", {}, b'{"parts": [1]}'),
                ("GET", f"{base}/parts", {}, None), ("PUT", f"{base}/parts/1", {}, None)]
    for method, url, extra, body in requests:
        async with gateway.http.request(method, URL(url, encoded=True), headers={**auth(), **extra},
                                        data=body) as response:
            assert response.status == 404, (raw_id, method, response.status, await response.read())
            if method != "HEAD":
                assert (await error_of(response))["code"] == "not_found"
    assert await db.fetchval("select count(*) from uploads") == total
    assert await db.fetchval(count_events) == events


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("chunked", [False, True])
async def test_huge_json_body_is_413(gateway: Gateway, db, method: str, chunked: bool) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(2 * PART, **HINT)
    before = await snapshot(db, upload_id(location))
    payload = b'{"parts": [' + b"1, " * 200_000 + b"1]}"  # ~600 KiB of valid JSON

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 64 * 1024):
            yield payload[i:i + 64 * 1024]
            if i == 0:
                await asyncio.sleep(0.3)  # the first piece arrives alone, as on a slow link

    async with gateway.http.request(method, f"{location}/parts", data=stream() if chunked else payload,
                                    headers={**auth(), "Content-Type": "application/json"}) as response:
        assert response.status == 413
        assert (await error_of(response))["code"] == "request_too_large"
    assert await snapshot(db, upload_id(location)) == before


async def _send_in_two_pieces(gw: Gateway, path: str, body: bytes, split: int) -> tuple[int, bytes]:
    """One request on a raw socket: headers and the first `split` body bytes, a pause, then the rest."""
    url = URL(gw.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = (f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: {auth()['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + body[:split])
    await writer.drain()
    if split < len(body):
        await asyncio.sleep(0.3)
        writer.write(body[split:])
        await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("split", [None, 5])
async def test_json_body_arriving_in_pieces_is_read_whole(gateway: Gateway, split: int | None) -> None:
    location = await gateway.create(2 * PART, **HINT)
    body = json.dumps({"parts": [1, 2]}).encode()
    status, answer = await _send_in_two_pieces(gateway, f"{URL(location).path}/parts", body,
                                               len(body) if split is None else split)
    assert status == 200, answer


@pytest.mark.parametrize("version", [None, "", "0.2.2", "1.0", "1.0.0, 0.2.2"])
async def test_missing_tus_resumable_is_412(gateway: Gateway, db, version: str | None) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(100)
    before = await snapshot(db, upload_id(location))
    count = await owner_rows(db, "alice")
    headers = {"Authorization": f"Bearer {token()}"}
    if version is not None:
        headers["Tus-Resumable"] = version
    requests = [("POST", gateway.files(), {"Upload-Length": "10"}, None), ("HEAD", location, {}, None),
                ("PATCH", location, {**OCTETS, "Upload-Offset": "0"}, b"x" * 100), ("DELETE", location, {}, None),
                ("POST", location, {"X-HTTP-Method-Override": "DELETE"}, None)]
    for method, url, extra, body in requests:
        async with gateway.http.request(method, url, headers={**headers, **extra}, data=body) as response:
            assert response.status == 412, (method, url, response.status)
            assert response.headers["Tus-Version"] == "1.0.0"
            if method != "HEAD":
                assert (await error_of(response))["code"] == "unsupported_version"
    assert await snapshot(db, upload_id(location)) == before
    assert await owner_rows(db, "alice") == count
    # Discovery and the non-tus endpoints do not need it.
    async with gateway.http.options(gateway.files()) as response:
        assert response.status == 204
    async with gateway.http.get(f"{location}/parts", headers=headers) as response:
        assert response.status == 200
    async with gateway.http.get(location, headers=headers) as response:
        assert response.status == 409 and (await error_of(response))["code"] == "not_ready"
