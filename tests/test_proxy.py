"""The proxy path: tus PATCH bytes streamed into S3 parts, stashes, one writer, checksums."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.http.keys import PROXY
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.direct import put_part, sign_ok
from tests.support.gateway import Gateway, make_settings, running, upload_id
from tests.support.proxies import TcpProxy
from tests.support.storage import sha256, stored_sha256
from tests.support.tokens import auth

PART = 5 * MiB
HINT = {"Upload-Part-Size": str(PART)}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


async def patch(gw: Gateway, location: str, offset: int, data: bytes, **headers: str) -> tuple[int, dict]:
    async with gw.http.patch(location, data=data, headers={**auth(), **OCTETS, "Upload-Offset": str(offset),
                                                           **headers}) as response:
        body = await response.read()
        return response.status, {**response.headers, "_body": body}


async def upload_in_chunks(gw: Gateway, location: str, data: bytes, chunk: int) -> None:
    offset = 0
    while offset < len(data):
        status, headers = await patch(gw, location, offset, data[offset:offset + chunk])
        assert status == 204, headers
        assert int(headers["Upload-Offset"]) == min(offset + chunk, len(data))
        assert "Upload-Expires" in headers
        offset += chunk


@pytest.mark.parametrize("chunk", [1 * MiB + 17, PART, 2 * PART + 3, 64 * MiB])
async def test_any_chunk_size(gateway: Gateway, db, s3, chunk: int) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * PART + 4321)
    location = await gateway.create(len(data), **HINT)
    await upload_in_chunks(gateway, location, data, chunk)
    assert await stored_sha256(db, s3, location) == sha256(data)
    # Superseded stash segments are gone once their part is committed.
    assert await db.fetchval("select count(*) from upload_stash where upload_id = $1", upload_id(location)) == 0


async def test_stash_counts_in_offset_and_is_compacted(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART + 10)
    location = await gateway.create(len(data), **HINT)
    chunk = 200 * 1024
    offset = 0
    for _ in range(20):  # 20 small chunks inside part 1: more than 16 segments get merged
        status, headers = await patch(gateway, location, offset, data[offset:offset + chunk])
        assert status == 204
        offset += chunk
        assert int(headers["Upload-Offset"]) == offset
    segments = await db.fetch("select size from upload_stash where upload_id = $1", upload_id(location))
    assert len(segments) <= 16 and sum(r["size"] for r in segments) == offset
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.headers["Upload-Offset"] == str(offset)
    status, _ = await patch(gateway, location, offset, data[offset:])
    assert status == 204
    assert await stored_sha256(db, s3, location) == sha256(data)


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({"Content-Type": "application/octet-stream"}, 415, "invalid_content_type"),
    ({"Upload-Offset": "5"}, 409, "offset_mismatch"),
    ({"Upload-Offset": "x"}, 400, "invalid_offset"),
    ({"Upload-Checksum": "sha3 AAAA"}, 400, "invalid_checksum_algorithm"),
    ({"Upload-Checksum": "sha1 !!!"}, 400, "invalid_request"),
    ({"Upload-Length": "100"}, 400, "length_already_set"),
])
async def test_bad_patches_change_nothing(gateway: Gateway, db, headers: dict, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    location = await gateway.create(1000)
    request = {**auth(), **OCTETS, "Upload-Offset": "0", **headers}
    async with gateway.http.patch(location, data=b"x" * 10, headers=request) as response:
        assert response.status == status
        assert (await response.json())["error"]["code"] == code
    row = await upload_row(db, upload_id(location))
    assert row["prefix_parts"] == 0
    assert await db.fetchval("select count(*) from upload_stash where upload_id = $1", upload_id(location)) == 0


async def test_body_past_length_is_413(gateway: Gateway) -> None:
    location = await gateway.create(100)
    status, _headers = await patch(gateway, location, 0, b"x" * 101)
    assert status == 413


async def test_missing_offset_is_400(gateway: Gateway) -> None:
    location = await gateway.create(100)
    async with gateway.http.patch(location, data=b"x", headers={**auth(), **OCTETS}) as response:
        assert response.status == 400


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "crc32"])
async def test_checksum_verified(gateway: Gateway, db, s3, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    import zlib

    def digest(chunk: bytes) -> str:
        raw = zlib.crc32(chunk).to_bytes(4, "big") if algorithm == "crc32" else hashlib.new(algorithm, chunk).digest()
        return base64.b64encode(raw).decode()

    data = os.urandom(PART + 1000)
    location = await gateway.create(len(data), **HINT)
    first = data[:PART + 500]
    corrupted = b"X" + first[1:]
    status, headers = await patch(gateway, location, 0, corrupted,
                                  **{"Upload-Checksum": f"{algorithm} {digest(first)}"})
    assert status == 460
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.headers["Upload-Offset"] == "0"  # the chunk was discarded
    assert await db.fetchval("select count(*) from upload_parts where upload_id = $1", upload_id(location)) == 0
    status, headers = await patch(gateway, location, 0, first, **{"Upload-Checksum": f"{algorithm} {digest(first)}"})
    assert status == 204 and headers["Upload-Offset"] == str(len(first))
    rest = data[len(first):]
    status, _ = await patch(gateway, location, len(first), rest, **{"Upload-Checksum": f"{algorithm} {digest(rest)}"})
    assert status == 204
    assert await stored_sha256(db, s3, location) == sha256(data)


async def test_deferred_length_declared_on_patch(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART + 3000)
    location = await gateway.create(None, **HINT)
    status, headers = await patch(gateway, location, 0, data[:PART + 1000])
    assert status == 204 and headers["Upload-Offset"] == str(PART + 1000)
    # The stashed bytes become the final part when the length is declared with the last chunk.
    status, headers = await patch(gateway, location, PART + 1000, data[PART + 1000:],
                                  **{"Upload-Length": str(len(data))})
    assert status == 204 and headers["Upload-Offset"] == str(len(data))
    assert await stored_sha256(db, s3, location) == sha256(data)


async def test_length_declared_by_empty_patch_flushes_stash(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(PART + 3000)
    location = await gateway.create(None, **HINT)
    status, _ = await patch(gateway, location, 0, data)
    assert status == 204
    status, headers = await patch(gateway, location, len(data), b"", **{"Upload-Length": str(len(data))})
    assert status == 204 and headers["Upload-Offset"] == str(len(data))
    assert await stored_sha256(db, s3, location) == sha256(data)


async def test_patch_on_completed_upload(gateway: Gateway) -> None:
    location = await gateway.create(10)
    assert (await patch(gateway, location, 0, b"0123456789"))[0] == 204
    status, headers = await patch(gateway, location, 10, b"")
    assert status == 204 and headers["Upload-Offset"] == "10"
    assert (await patch(gateway, location, 0, b"0123456789"))[0] == 409


async def test_creation_with_upload(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3000)
    async with gateway.http.post(gateway.files(), data=data[:1000], headers={
            **auth(), **OCTETS, "Upload-Length": str(len(data))}) as response:
        assert response.status == 201
        assert response.headers["Upload-Offset"] == "1000"
        location = response.headers["Location"]
    assert (await patch(gateway, location, 1000, data[1000:]))[0] == 204
    assert await stored_sha256(db, s3, location) == sha256(data)


async def test_paths_do_not_mix(gateway: Gateway) -> None:
    data = os.urandom(2 * PART)
    location = await gateway.create(len(data), **HINT)
    await sign_ok(gateway, location, [1])
    status, headers = await patch(gateway, location, 0, data[:100])
    assert status == 409 and b"path_conflict" in headers["_body"]
    other = await gateway.create(len(data), **HINT)
    assert (await patch(gateway, other, 0, data[:100]))[0] == 204
    async with gateway.http.post(f"{other}/parts", json={"parts": [1]}, headers=auth()) as response:
        assert response.status == 409 and (await response.json())["error"]["code"] == "path_conflict"


async def test_direct_then_proxy_after_parts_confirmed(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(2 * PART + 10)
    location = await gateway.create(len(data), **HINT)
    part = (await sign_ok(gateway, location, [1]))[1]
    assert await put_part(gateway, part, data[:PART]) == 200
    async with gateway.http.put(f"{location}/parts/1", headers=auth()) as response:
        assert response.status == 204
    assert (await patch(gateway, location, PART, data[PART:]))[0] == 204
    assert await stored_sha256(db, s3, location) == sha256(data)


async def _open_patch(location: str, offset: int, declared: int, sent: bytes,
                      **headers: str) -> asyncio.StreamWriter:
    """A raw PATCH announcing `declared` bytes that sends only `sent`; the caller drops or keeps it."""
    url = urlsplit(location)
    _reader, writer = await asyncio.open_connection(url.hostname, url.port)
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = (f"PATCH {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: {auth()['Authorization']}\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {declared}\r\n{extra}\r\n")
    writer.write(head.encode() + sent)
    await writer.drain()
    return writer


async def _raw_patch(location: str, offset: int, declared: int, sent: bytes, **headers: str) -> None:
    """Send headers for `declared` bytes, then only `sent`, then drop the connection (a reset)."""
    writer = await _open_patch(location, offset, declared, sent, **headers)
    await asyncio.sleep(0.5)
    writer.transport.abort()


async def head_offset(gw: Gateway, location: str) -> int:
    async with gw.http.head(location, headers=auth()) as response:
        assert response.status == 200
        return int(response.headers["Upload-Offset"])


async def offset_after_drop(gw: Gateway, location: str) -> int:
    """The offset once the gateway noticed the drop and the cut PATCH has ended."""
    for _ in range(100):
        if upload_id(location) not in gw.app[PROXY].writers:
            break
        await asyncio.sleep(0.05)
    return await head_offset(gw, location)


async def resume(gw: Gateway, location: str, data: bytes, offset: int) -> None:
    status, headers = await patch(gw, location, offset, data[offset:])
    assert status == 204, headers
    assert int(headers["Upload-Offset"]) == len(data)


# Bytes a drop may lose: what was in flight, not yet read by the gateway (docs/architecture.md §3.3).
IN_FLIGHT = 1 * MiB
# Inside part 1, right after its boundary, inside part 2, just before the end.
CUTS = [PART // 2, PART + 1000, PART + PART // 2 + 7, 3 * PART - 5]


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("cancellation", [False, True], ids=["serve", "handler-cancellation"])
async def test_a_cut_patch_keeps_what_arrived(stack, db, s3, cut: int, cancellation: bool) -> None:  # type: ignore[no-untyped-def]
    """A connection reset after `cut` bytes: the offset is where the body broke, under `gateway serve`
    (the handler runs on) and under aiohttp's handler cancellation (the handler is cancelled)."""
    data = os.urandom(3 * PART)
    async with running(make_settings(stack), handler_cancellation=cancellation) as gw:
        location = await gw.create(len(data), **HINT)
        await _raw_patch(location, 0, len(data), data[:cut])
        offset = await offset_after_drop(gw, location)
        assert cut - IN_FLIGHT <= offset <= cut
        await resume(gw, location, data, offset)
        assert await stored_sha256(db, s3, location) == sha256(data)
        assert await db.fetchval("select count(*) from upload_stash where upload_id = $1", upload_id(location)) == 0


@pytest.mark.parametrize("cut", [MiB - 1, 2 * PART + 3 * MiB + 99])
async def test_a_part_bigger_than_the_buffer_keeps_what_arrived(stack, db, s3, cut: int) -> None:  # type: ignore[no-untyped-def]
    """Parts bigger than GATEWAY_PROXY_BUFFER (here 1 MiB in 5 MiB parts; 16 MiB in 64 MiB parts by
    default): a cut anywhere keeps what arrived, and memory holds at most the buffer."""
    data = os.urandom(3 * PART + 1234)
    async with running(make_settings(stack, proxy_buffer=MiB), handler_cancellation=False) as gw:
        location = await gw.create(len(data), **HINT)
        await _raw_patch(location, 0, len(data), data[:cut])
        offset = await offset_after_drop(gw, location)
        assert cut - IN_FLIGHT <= offset <= cut
        segments = await db.fetch("select size from upload_stash where upload_id = $1", upload_id(location))
        assert all(r["size"] <= MiB for r in segments) and sum(r["size"] for r in segments) == offset % PART
        await resume(gw, location, data, offset)
        assert await stored_sha256(db, s3, location) == sha256(data)


async def test_a_cut_through_a_tcp_proxy_keeps_what_arrived(stack, db, s3) -> None:  # type: ignore[no-untyped-def]
    """The bench's setting: a proxy between client and gateway aborts both sides mid-body."""
    data = os.urandom(3 * PART)
    async with running(make_settings(stack), handler_cancellation=False) as gw:
        location = await gw.create(len(data), **HINT)
        cut_after = 2 * PART + 12345  # bytes client -> gateway, the request head included
        async with TcpProxy(int(urlsplit(gw.url).port or 0), cut_after=cut_after) as proxy:
            with contextlib.suppress(aiohttp.ClientError):
                await patch(gw, proxy.url + urlsplit(location).path, 0, data)
            assert proxy.cuts == 1
        offset = await offset_after_drop(gw, location)
        assert cut_after - IN_FLIGHT <= offset <= cut_after
        await resume(gw, location, data, offset)
        assert await stored_sha256(db, s3, location) == sha256(data)


async def test_a_cut_checksummed_patch_keeps_nothing_new(stack, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * PART)
    digest = "sha256 " + base64.b64encode(hashlib.sha256(data[MiB:]).digest()).decode()
    async with running(make_settings(stack), handler_cancellation=False) as gw:
        location = await gw.create(len(data), **HINT)
        assert (await patch(gw, location, 0, data[:MiB]))[0] == 204
        await _raw_patch(location, MiB, len(data) - MiB, data[MiB:PART + 2 * MiB], **{"Upload-Checksum": digest})
        await asyncio.sleep(0.5)
        assert await head_offset(gw, location) == MiB  # as tus says: a cut checksummed body counts nothing
        assert (await upload_row(db, upload_id(location)))["prefix_parts"] == 0
        status, _ = await patch(gw, location, MiB, data[MiB:], **{"Upload-Checksum": digest})
        assert status == 204
        assert await stored_sha256(db, s3, location) == sha256(data)


async def test_a_head_stops_a_silent_patch(stack, db, s3) -> None:  # type: ignore[no-untyped-def]
    """A drop the gateway does not see (no reset reaches it): the client's HEAD, once the body has been
    silent for a second, stops the old PATCH and answers the offset that includes what it received."""
    data = os.urandom(2 * PART)
    async with running(make_settings(stack), handler_cancellation=False) as gw:
        location = await gw.create(len(data), **HINT)
        sent = PART + 2 * MiB + 5
        silent = await _open_patch(location, 0, len(data), data[:sent])
        try:
            await asyncio.sleep(1.5)
            assert await head_offset(gw, location) == sent
        finally:
            silent.transport.abort()
        await resume(gw, location, data, sent)
        assert await stored_sha256(db, s3, location) == sha256(data)


async def test_newer_patch_stops_a_stalled_writer(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(2 * PART)
    location = await gateway.create(len(data), **HINT)
    release = asyncio.Event()

    async def stalled_body():  # type: ignore[no-untyped-def]
        yield data[:1000]
        await release.wait()
        yield data[1000:PART]

    async def stalled_patch() -> int:
        async with gateway.http.patch(location, data=stalled_body(), headers={
                **auth(), **OCTETS, "Upload-Offset": "0", "Content-Length": str(PART)}) as response:
            await response.read()
            return response.status

    first = asyncio.create_task(stalled_patch())
    await asyncio.sleep(0.5)
    # The client reconnected: its new PATCH stops the stalled one, which saves its 1000 bytes first, so
    # the new one learns the real offset.
    status, headers = await patch(gateway, location, 0, data[:PART])
    assert status == 409 and b'"offset": 1000' in headers["_body"], headers
    release.set()
    with contextlib.suppress(aiohttp.ClientError):
        assert await first == 204  # it answers what it kept (its client may be gone by then)
    assert (await patch(gateway, location, 1000, data[1000:]))[0] == 204
    assert await stored_sha256(db, s3, location) == sha256(data)


@pytest.mark.parametrize("with_checksum", [False, True])
async def test_chunked_bodies_are_kept_in_bounded_segments(gateway: Gateway, db, s3, with_checksum: bool) -> None:  # type: ignore[no-untyped-def]
    """No Content-Length: S3 needs sizes up front, so bytes go to stash segments of at most GATEWAY_PROXY_BUFFER
    (bounded memory) and become parts once whole."""
    data = os.urandom(3 * PART + 1234)
    location = await gateway.create(len(data), **HINT)
    first, rest = data[:PART + 3 * MiB], data[PART + 3 * MiB:]

    async def chunked(payload: bytes):  # type: ignore[no-untyped-def]
        for start in range(0, len(payload), 700 * 1024):
            yield payload[start:start + 700 * 1024]

    for offset, payload in ((0, first), (len(first), rest)):
        headers = {**auth(), **OCTETS, "Upload-Offset": str(offset)}
        if with_checksum:
            headers["Upload-Checksum"] = "sha1 " + base64.b64encode(hashlib.sha1(payload).digest()).decode()
        async with gateway.http.patch(location, data=chunked(payload), headers=headers) as response:
            assert response.status == 204
            assert response.headers["Upload-Offset"] == str(offset + len(payload))
    assert await stored_sha256(db, s3, location) == sha256(data)


async def test_a_first_proxy_patch_lowers_the_part_size_to_the_buffer(stack, db, s3) -> None:  # type: ignore[no-untyped-def]
    """Parts bigger than GATEWAY_PROXY_BUFFER would go to S3 twice (part + segments): a first PATCH at
    offset 0 of an upload nothing was signed for makes the parts the buffer's size instead."""
    data = os.urandom(3 * PART + 77)
    async with running(make_settings(stack, proxy_buffer=PART), handler_cancellation=False) as gw:
        location = await gw.create(len(data), **{"Upload-Part-Size": str(2 * PART)})
        await _raw_patch(location, 0, len(data), data[:PART + 1234])
        offset = await offset_after_drop(gw, location)
        async with gw.http.head(location, headers=auth()) as response:
            assert response.headers["Upload-Part-Size"] == str(PART)
        assert PART + 1234 - IN_FLIGHT <= offset <= PART + 1234
        assert (await upload_row(db, upload_id(location)))["prefix_parts"] == 1
        await resume(gw, location, data, offset)
        assert await stored_sha256(db, s3, location) == sha256(data)
