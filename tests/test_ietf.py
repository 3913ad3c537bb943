"""IETF "Resumable Uploads for HTTP" draft -11 (interop version 8), with raw HTTP from the draft's examples."""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import urlsplit

import pytest

from gateway.http.keys import PROXY
from tests.support import MiB, tokens
from tests.support.db import upload_row
from tests.support.gateway import Gateway, client_gateway, make_settings, upload_id
from tests.support.storage import sha256, stored_bytes
from tests.support.tokens import auth

DRAFT = {"Upload-Draft-Interop-Version": "8"}
PART = 5 * MiB


@pytest.fixture
async def gateway(stack, aiohttp_client):  # type: ignore[no-untyped-def]
    """5 MiB parts, so a few MiB already span parts (the default is 16 MiB)."""
    return await client_gateway(aiohttp_client, make_settings(stack, part_size=PART))


def bearer(subject: str = "alice") -> dict[str, str]:
    return {**tokens.bearer(subject), **DRAFT}


async def raw_request(gw: Gateway, head: str, body: bytes = b"", *, send: int | None = None,
                      read_final: bool = True) -> list[tuple[int, dict[str, str], bytes]]:
    """Send a request by hand and read every response on the wire, interim ones included.
    With `send`, only that many body bytes go out before the connection is cut."""
    url = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(head.encode() + body[:send if send is not None else len(body)])
    await writer.drain()
    responses = []
    try:
        while True:
            status_line = (await asyncio.wait_for(reader.readline(), 10)).decode()
            if not status_line:
                break
            headers = {}
            while (line := (await reader.readline()).decode().strip()):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            status = int(status_line.split()[1])
            content = b""
            if status >= 200 and "content-length" in headers:
                content = await reader.readexactly(int(headers["content-length"]))
            responses.append((status, headers, content))
            if status >= 200 or (send is not None and not read_final):
                break
    finally:
        writer.transport.abort()
    return responses


def request_head(gw: Gateway, method: str, path: str, headers: dict[str, str]) -> str:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"{method} {path} HTTP/1.1\r\nHost: {urlsplit(gw.url).netloc}\r\n{lines}\r\n"


async def test_creation_of_a_whole_upload_with_104(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART + 123)
    head = request_head(gateway, "POST", "/files", {
        **bearer(), "Content-Disposition": "inline; filename=\"file name.jpg\"; filename*=UTF-8''file%20name.jpg",
        "Content-Type": "image/jpeg", "Content-Length": str(len(data)), "Upload-Length": str(len(data)),
        "Upload-Complete": "?1"})
    responses = await raw_request(gateway, head, data)
    (interim, interim_headers, _), (final, final_headers, _) = responses
    assert interim == 104 and interim_headers["location"].endswith(final_headers["location"].rsplit("/", 1)[-1])
    assert "max-size=" in interim_headers["upload-limit"]
    assert final == 201 and final_headers["upload-complete"] == "?1"
    row = await upload_row(db, upload_id(final_headers["location"]))
    assert row["state"] == "completed"
    assert json.loads(row["metadata"]) == {"filename": "file name.jpg", "filetype": "image/jpeg"}
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


async def test_partial_creation_then_appends(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(2 * PART + 10)
    first = data[:PART + 7]
    head = request_head(gateway, "POST", "/files", {**bearer(), "Upload-Complete": "?0",
                                                    "Content-Length": str(len(first)),
                                                    "Upload-Length": str(len(data))})
    *_, (status, headers, _) = await raw_request(gateway, head, first)
    assert status == 201 and headers["upload-complete"] == "?0" and headers["upload-offset"] == str(len(first))
    location = headers["location"]
    async with gateway.http.head(location, headers=bearer()) as response:
        assert response.status == 204 and response.headers["Upload-Offset"] == str(len(first))
        assert response.headers["Upload-Complete"] == "?0"
        assert response.headers["Upload-Length"] == str(len(data))
        assert response.headers["Cache-Control"] == "no-store" and "Upload-Limit" in response.headers
    # Appending at a wrong offset: 409, the right offset in the header, a problem document.
    async with gateway.http.patch(location, data=b"x", headers={
            **bearer(), "Content-Type": "application/partial-upload", "Upload-Offset": "3",
            "Upload-Complete": "?0"}) as response:
        assert response.status == 409 and response.headers["Upload-Offset"] == str(len(first))
        assert response.headers["Content-Type"] == "application/problem+json"
        problem = await response.json(content_type=None)
        assert problem["type"].endswith("#mismatching-upload-offset")
        assert problem["expected-offset"] == len(first) and problem["provided-offset"] == 3
    async with gateway.http.patch(location, data=data[len(first):], headers={
            **bearer(), "Content-Type": "application/partial-upload", "Upload-Offset": str(len(first)),
            "Upload-Complete": "?1"}) as response:
        assert response.status == 204 and response.headers["Upload-Complete"] == "?1"
    row = await upload_row(db, upload_id(location))
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)
    # Appending to a completed upload.
    async with gateway.http.patch(location, data=b"more", headers={
            **bearer(), "Content-Type": "application/partial-upload", "Upload-Offset": str(len(data)),
            "Upload-Complete": "?1"}) as response:
        assert response.status == 400
        assert (await response.json(content_type=None))["type"].endswith("#inconsistent-upload-length")


async def test_resume_after_cut_connection(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * PART)
    head = request_head(gateway, "POST", "/files",
                        {**bearer(), "Upload-Complete": "?1", "Content-Length": str(len(data))})
    # The 104 delivers the upload's URL before the connection breaks mid-body.
    responses = await raw_request(gateway, head, data, send=PART + PART // 2, read_final=False)
    assert responses[0][0] == 104
    location = responses[0][1]["location"]
    for _ in range(100):  # the gateway notices the drop and saves what arrived
        if upload_id(location) not in gateway.app[PROXY].writers:
            break
        await asyncio.sleep(0.05)
    async with gateway.http.head(location, headers=bearer()) as response:
        offset = int(response.headers["Upload-Offset"])
        assert response.headers["Upload-Complete"] == "?0"
    # Everything that arrived is kept, also after the part boundary (all but what was in flight).
    assert PART + PART // 2 - MiB <= offset <= PART + PART // 2
    async with gateway.http.patch(location, data=data[offset:], headers={
            **bearer(), "Content-Type": "application/partial-upload", "Upload-Offset": str(offset),
            "Upload-Complete": "?1"}) as response:
        assert response.status == 204 and response.headers["Upload-Complete"] == "?1"
    row = await upload_row(db, upload_id(location))
    assert row["state"] == "completed" and row["length"] == len(data)
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


async def test_length_from_completion_of_a_chunked_body(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART + 99)

    async def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(data), MiB):
            yield data[start:start + MiB]

    async with gateway.http.post(gateway.files(), data=chunks(), headers={**bearer(), "Upload-Complete": "?1"}) as r:
        assert r.status == 201 and r.headers["Upload-Complete"] == "?1"
        location = r.headers["Location"]
    row = await upload_row(db, upload_id(location))
    assert row["length"] == len(data) and row["state"] == "completed"
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


async def test_empty_creation_then_cancel(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    async with gateway.http.post(gateway.files(), headers={**bearer(), "Upload-Complete": "?0"}) as response:
        assert response.status == 201 and response.headers["Upload-Offset"] == "0"
        location = response.headers["Location"]
    async with gateway.http.delete(location, headers=bearer()) as response:
        assert response.status == 204
    assert (await upload_row(db, upload_id(location)))["state"] == "terminated"


async def test_draft_errors_are_problem_documents(gateway: Gateway) -> None:
    async with gateway.http.post(gateway.files(), headers={**bearer(), "Upload-Complete": "yes"}) as response:
        assert response.status == 400 and response.headers["Content-Type"] == "application/problem+json"
        assert (await response.json(content_type=None))["type"] == "about:blank"
    async with gateway.http.post(gateway.files(), headers={**DRAFT, "Upload-Complete": "?0"}) as response:
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    async with gateway.http.post(gateway.files(), headers={**bearer(), "Upload-Draft-Interop-Version": "9",
                                                           "Upload-Complete": "?0"}) as response:
        assert response.status == 412
    location = await gateway.create(10)
    async with gateway.http.patch(location, data=b"x", headers={
            **bearer(), "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0",
            "Upload-Complete": "?0"}) as response:
        assert response.status == 415
    async with gateway.http.options(gateway.files(), headers=DRAFT) as response:
        assert response.headers["Accept-Patch"] == "application/partial-upload"
        assert "min-size=0" in response.headers["Upload-Limit"]
    async with gateway.http.head(location, headers=auth()) as response:  # the same upload, in tus terms
        assert response.status == 200 and response.headers["Upload-Offset"] == "0"


# -- earlier interop versions, on the same uploads --------------------------------------------------------


async def test_interop_3_speaks_upload_incomplete(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    """draft-01 (interop 3, iOS 17's URLSession): `Upload-Incomplete: ?1` while more is to come, no
    Upload-Limit, appends of any content type; answers in the same words."""
    v3 = {**tokens.bearer("alice"), "Upload-Draft-Interop-Version": "3"}
    data = os.urandom(PART + 99)
    first = data[:PART]
    head = request_head(gateway, "POST", "/files", {**v3, "Upload-Incomplete": "?1", "Content-Length": str(PART)})
    (interim, interim_headers, _), (status, headers, _) = await raw_request(gateway, head, first)
    assert interim == 104 and interim_headers["upload-draft-interop-version"] == "3"
    assert "upload-limit" not in interim_headers
    assert status == 201 and headers["upload-incomplete"] == "?1" and "upload-complete" not in headers
    assert headers["upload-offset"] == str(PART) and headers["upload-draft-interop-version"] == "3"
    location = headers["location"]
    async with gateway.http.head(location, headers=v3) as response:
        assert response.status == 204 and response.headers["Upload-Incomplete"] == "?1"
        assert response.headers["Upload-Offset"] == str(PART) and "Upload-Limit" not in response.headers
    # The same upload answers a version-8 client in version 8's words.
    async with gateway.http.head(location, headers=bearer()) as response:
        assert response.headers["Upload-Complete"] == "?0" and "Upload-Limit" in response.headers
    async with gateway.http.patch(location, data=data[PART:], headers={
            **v3, "Content-Type": "application/octet-stream", "Upload-Offset": str(PART),
            "Upload-Incomplete": "?0"}) as response:
        assert response.status == 204, await response.text()
        assert response.headers["Upload-Incomplete"] == "?0"
    row = await upload_row(db, upload_id(location))
    assert row["length"] == len(data)
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


@pytest.mark.parametrize(("version", "limit_key", "typed"), [("5", None, False), ("6", "expires", True),
                                                            ("7", "max-age", True)])
async def test_interop_5_to_7_as_their_drafts_say(gateway: Gateway, db, s3, version: str,  # type: ignore[no-untyped-def]
                                                   limit_key: str | None, typed: bool) -> None:
    headers = {**tokens.bearer("alice"), "Upload-Draft-Interop-Version": version}
    data = os.urandom(PART + 5)
    async with gateway.http.post(gateway.files(), data=data[:PART], headers={
            **headers, "Upload-Complete": "?0", "Upload-Length": str(len(data))}) as response:
        assert response.status == 201 and response.headers["Upload-Draft-Interop-Version"] == version
        location = response.headers["Location"]
        limit = response.headers.get("Upload-Limit")
        assert (limit is None) if limit_key is None else f"{limit_key}=" in (limit or "")
    # From -04 on an append must say application/partial-upload; before, any type goes.
    async with gateway.http.patch(location, data=data[PART:], headers={
            **headers, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(PART),
            "Upload-Complete": "?1"}) as response:
        assert response.status == (415 if typed else 204), await response.text()
    if typed:
        async with gateway.http.patch(location, data=data[PART:], headers={
                **headers, "Content-Type": "application/partial-upload", "Upload-Offset": str(PART),
                "Upload-Complete": "?1"}) as response:
            assert response.status == 204
    row = await upload_row(db, upload_id(location))
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(data)


async def test_unknown_interop_versions_are_412(gateway: Gateway) -> None:
    for version in ("2", "9", "x"):
        async with gateway.http.post(gateway.files(), headers={
                **tokens.bearer("alice"), "Upload-Draft-Interop-Version": version, "Upload-Complete": "?0"}) as r:
            assert r.status == 412
            assert "3, 4, 5, 6, 7, 8" in (await r.json(content_type=None))["title"]
