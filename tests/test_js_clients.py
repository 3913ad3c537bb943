"""The real JavaScript tus clients against a running gateway: tus-js-client 4 and Uppy 5 (@uppy/tus).

Each test writes a file, runs tests/js/tus_upload.mjs or tests/js/uppy_upload.mjs with Node in a
subprocess (asyncio, so the in-process gateway keeps serving) and checks that the S3 object has the
file's sha256. tests/js/node_modules is installed by the `js_packages` fixture with `npm ci` from
tests/js/package-lock.json; without Node the module is skipped, but a failed install fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from asyncpg import Connection

from gateway.embedded import StackInfo
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, running, start_gateway, upload_id
from tests.support.js import install_uppy6_packages, run_js, tus_options
from tests.support.node import NodeFailed, node_requirement, write_file
from tests.support.proxies import TcpProxy
from tests.support.storage import stored_sha256
from tests.support.tokens import auth, token

PART = 5 * MiB


pytestmark = [node_requirement("the JavaScript tus client tests"), pytest.mark.usefixtures("js_packages")]


def patches(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result["requests"] if r["method"] == "PATCH"]


@pytest.fixture
async def small_parts(stack: StackInfo) -> AsyncIterator[Gateway]:
    """A gateway with 5 MiB parts, so a few MiB of data already spans several S3 parts."""
    async for gw in start_gateway(make_settings(stack, part_size=PART)):
        yield gw


# --- through a TCP proxy in front of the gateway --------------------------------------------------------


def through(proxy: TcpProxy, gw: Gateway) -> str:
    return f"http://127.0.0.1:{proxy.port}{gw.settings.base_path}"


def gateway_port(gw: Gateway) -> int:
    port = urlsplit(gw.url).port
    assert port is not None
    return port


# --- tus-js-client ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "interop"), [("ietf-draft-03", "5"), ("ietf-draft-05", "6")])
async def test_tus_js_client_ietf_modes(small_parts: Gateway, db: Connection, s3: Any, tmp_path: Path,
                                        protocol: str, interop: str) -> None:
    """tus-js-client 4.3's IETF modes send interop 5 and 6: each is answered as its draft says."""
    path = tmp_path / f"{protocol}.bin"
    digest = write_file(path, 3 * PART + 11)
    result = await run_js("tus_upload.mjs", tus_options(small_parts, path, protocol=protocol, chunkSize=2 * PART))
    assert result["bytesUploaded"] == 3 * PART + 11
    assert {r["headers"].get("Upload-Draft-Interop-Version") for r in result["requests"]} == {interop}
    assert [r["method"] for r in result["requests"]] == ["POST", "PATCH", "PATCH"]
    assert all(r["status"] in (201, 204) for r in result["requests"]), result["requests"]
    assert await stored_sha256(db, s3, result["url"]) == digest


async def test_default_options_one_patch(gateway: Gateway, db: Connection, s3: Any, tmp_path: Path) -> None:
    """chunkSize Infinity: a POST, then the whole file streamed in one PATCH, across 16 MiB parts."""
    path = tmp_path / "default.bin"
    digest = write_file(path, 20 * MiB + 7)
    result = await run_js("tus_upload.mjs", tus_options(gateway, path))
    assert result["bytesUploaded"] == 20 * MiB + 7
    methods = [r["method"] for r in result["requests"]]
    assert methods == ["POST", "PATCH"], methods
    create, patch = result["requests"]
    assert create["status"] == 201 and create["headers"]["Upload-Length"] == str(20 * MiB + 7)
    assert create["headers"]["Tus-Resumable"] == "1.0.0"
    assert create["headers"]["Upload-Metadata"].startswith("filename ")
    assert patch["status"] == 204 and patch["headers"]["Upload-Offset"] == "0"
    assert patch["headers"]["Content-Type"] == "application/offset+octet-stream"
    assert await stored_sha256(db, s3, result["url"]) == digest
    metadata = (await upload_row(db, upload_id(result["url"])))["metadata"]
    assert json.loads(metadata)["filename"] == "default.bin"


@pytest.mark.parametrize(("chunk", "size", "source"), [
    (1 * MiB, 7 * MiB + 5, "file"),          # many PATCHes inside one part: stash segments
    (1 * MiB, 7 * MiB + 5, "buffer"),
    (12 * MiB, 25 * MiB + 1, "file"),        # each PATCH spans several parts
    (12 * MiB, 25 * MiB + 1, "buffer"),
])
async def test_chunk_sizes(small_parts: Gateway, db: Connection, s3: Any, tmp_path: Path, chunk: int, size: int,
                           source: str) -> None:
    path = tmp_path / "chunks.bin"
    digest = write_file(path, size)
    result = await run_js("tus_upload.mjs", tus_options(small_parts, path, chunkSize=chunk, source=source))
    assert result["bytesUploaded"] == size
    assert len(patches(result)) == -(-size // chunk)
    assert all(r["status"] == 204 for r in patches(result))
    assert await stored_sha256(db, s3, result["url"]) == digest


@pytest.mark.parametrize("chunk", [None, 3 * MiB])
async def test_upload_data_during_creation(small_parts: Gateway, db: Connection, s3: Any, tmp_path: Path,
                                           chunk: int | None) -> None:
    path = tmp_path / "creation.bin"
    size = 8 * MiB + 11
    digest = write_file(path, size)
    result = await run_js("tus_upload.mjs", tus_options(small_parts, path, uploadDataDuringCreation=True,
                                                          chunkSize=chunk))
    create = result["requests"][0]
    assert create["method"] == "POST" and create["status"] == 201
    assert create["headers"]["Content-Type"] == "application/offset+octet-stream"
    first = size if chunk is None else chunk
    assert create["offset"] == str(first)  # the POST's body was kept
    assert len(patches(result)) == -(-(size - first) // (chunk or size))
    assert await stored_sha256(db, s3, result["url"]) == digest


@pytest.mark.parametrize(("size", "source"), [
    (11 * MiB + 99, "stream"),
    (11 * MiB + 99, "reader"),
    (10 * MiB, "reader"),  # the last PATCH is empty: Upload-Length and no body
])
async def test_deferred_length(small_parts: Gateway, db: Connection, s3: Any, tmp_path: Path, size: int,
                               source: str) -> None:
    """uploadLengthDeferred: Upload-Defer-Length on POST, Upload-Length on the last PATCH.

    "stream" is a plain Readable (tus-js-client's StreamSource); "reader" a custom fileReader without a size.
    """
    path = tmp_path / "deferred.bin"
    digest = write_file(path, size)
    chunk = 2 * MiB
    async with TcpProxy(gateway_port(small_parts)) as proxy:
        options = tus_options(small_parts, path, source=source, chunkSize=chunk, uploadLengthDeferred=True,
                              endpoint=through(proxy, small_parts))
        result = await run_js("tus_upload.mjs", options)
    create = result["requests"][0]
    assert create["headers"].get("Upload-Defer-Length") == "1" and "Upload-Length" not in create["headers"]
    sent = patches(result)
    declared = [r for r in sent if "Upload-Length" in r["headers"]]
    assert len(declared) == 1 and declared[0] is sent[-1]
    assert declared[0]["headers"]["Upload-Length"] == str(size)
    assert len(sent) == size // chunk + 1
    last = proxy.requests("PATCH")[-1]
    assert last.headers["upload-length"] == str(size)
    if size % chunk:
        assert last.headers["content-length"] == str(size % chunk)
    else:  # Node's http client sends an empty body without a length as chunked
        assert "content-length" not in last.headers and last.headers["transfer-encoding"] == "chunked"
    assert result["bytesUploaded"] == size
    assert await stored_sha256(db, s3, result["url"]) == digest
    assert (await upload_row(db, upload_id(result["url"])))["length"] == size


TUS_JS_CLIENT_779 = (
    "tus-js-client 4.3.1 bug tus/tus-js-client#779 (open): with uploadLengthDeferred and a Readable whose size is "
    "a multiple of chunkSize, StreamSource waits for 'readable' after the stream ended, never sends the final "
    "PATCH with Upload-Length and never calls onSuccess/onError; the gateway is not involved")


async def test_deferred_length_aligned_stream_stalls_the_client(small_parts: Gateway, db: Connection, s3: Any,
                                                                tmp_path: Path) -> None:
    """The client stalls (known bug); the gateway holds every byte and the length can still be declared."""
    path = tmp_path / "aligned.bin"
    size = 10 * MiB
    digest = write_file(path, size)
    with pytest.raises(NodeFailed, match="upload stalled") as stalled:  # fails ("DID NOT RAISE") once fixed
        await run_js("tus_upload.mjs", tus_options(small_parts, path, source="stream", chunkSize=2 * MiB,
                                                     uploadLengthDeferred=True))
    found = re.search(r"\(url (\S+), offset (\d+)\)", stalled.value.stderr)
    assert found, stalled.value.stderr
    location, offset = found.group(1), int(found.group(2))
    assert offset == size  # every byte was accepted; only the length declaration is missing
    row = await upload_row(db, upload_id(location))
    assert row["length"] is None and row["state"] == "active"
    async with small_parts.http.head(location, headers=auth("js-user")) as response:
        assert response.headers["Upload-Offset"] == str(size) and response.headers["Upload-Defer-Length"] == "1"
    # What tus-js-client should have sent: an empty PATCH declaring the length.
    headers = {**auth("js-user"), "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(size),
               "Upload-Length": str(size)}
    async with small_parts.http.patch(location, data=b"", headers=headers) as response:
        assert response.status == 204 and response.headers["Upload-Offset"] == str(size)
    assert await stored_sha256(db, s3, location) == digest
    pytest.xfail(TUS_JS_CLIENT_779)


# --- resuming -------------------------------------------------------------------------------------------


async def test_resumes_after_connection_cut_mid_patch(small_parts: Gateway, db: Connection, s3: Any,
                                                      tmp_path: Path) -> None:
    """The connection dies mid-PATCH; tus-js-client retries by itself: HEAD, then PATCH from the offset.

    The cut comes 2 MiB into part 2, once part 1 is committed: the gateway keeps every byte of a
    dropped body it received (docs/architecture.md §3.3), so the client resumes at the 7 MiB the proxy
    let through, less the request head and what was still in flight.
    """
    path = tmp_path / "cut.bin"
    size = 12 * MiB + 3
    digest = write_file(path, size)

    async def part_one_committed(proxy: TcpProxy) -> None:
        # Asked of Postgres, not by HEAD: a HEAD means "the client resumes" and would stop the PATCH.
        upload = proxy.requests("PATCH")[-1].path.rsplit("/", 1)[-1]
        while not await db.fetchval("select prefix_parts >= 1 from uploads where id = $1", upload):
            await asyncio.sleep(0.02)

    async with TcpProxy(gateway_port(small_parts), cut_after=7 * MiB, before_cut=part_one_committed) as proxy:
        endpoint = through(proxy, small_parts)
        result = await run_js("tus_upload.mjs", tus_options(small_parts, path, endpoint=endpoint,
                                                              retryDelays=[0, 200, 500]))
    assert proxy.cuts == 1 and proxy.connections >= 2
    assert result["retries"] == 1, result["_stderr"]
    assert "failed to upload chunk at offset" in result["_stderr"]  # a network error (ECONNRESET/EPIPE)
    assert result["url"].startswith(endpoint + "/")  # Location was built from the proxy's Host
    trace = [(r["method"], r.get("status"), r.get("offset")) for r in result["requests"]]
    kept = int(trace[2][2])
    assert 6 * MiB <= kept <= 7 * MiB, trace
    # the cut PATCH has no response; the retry asks where to go on and sends the rest
    assert trace == [("POST", 201, "0"), ("PATCH", None, None), ("HEAD", 200, str(kept)),
                     ("PATCH", 204, str(size))], trace
    assert patches(result)[-1]["headers"]["Upload-Offset"] == str(kept)
    first, second = proxy.requests("PATCH")
    assert first.headers["content-length"] == str(size) and "transfer-encoding" not in first.headers
    assert second.headers["content-length"] == str(size - kept)
    assert result["bytesUploaded"] == size
    assert await stored_sha256(db, s3, result["url"]) == digest


async def test_resume_in_a_second_run_from_file_url_storage(small_parts: Gateway, db: Connection, s3: Any,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "resume.bin"
    size = 8 * MiB + 1234
    digest = write_file(path, size)
    storage = tmp_path / "tus-urls.json"
    options = tus_options(small_parts, path, chunkSize=3 * MiB, urlStorage=str(storage), resume=True)
    first = await run_js("tus_upload.mjs", {**options, "abortAfterChunks": 1})
    assert first["aborted"] and first["previousUploads"] == 0 and first["bytesUploaded"] == 3 * MiB
    stored_urls = [entry["uploadUrl"] for entry in json.loads(storage.read_text()).values()]
    assert stored_urls == [first["url"]]

    second = await run_js("tus_upload.mjs", options)
    assert not second["aborted"] and second["previousUploads"] == 1
    assert second["url"] == first["url"]
    assert [r["method"] for r in second["requests"]][:2] == ["HEAD", "PATCH"]  # no new POST
    assert second["startOffset"] == 3 * MiB
    assert second["sentThisRun"] == size - 3 * MiB < size
    assert await stored_sha256(db, s3, second["url"]) == digest


async def test_abort_with_terminate_deletes_the_upload(small_parts: Gateway, db: Connection, tmp_path: Path) -> None:
    """upload.abort(true): tus-js-client sends DELETE (termination) and forgets the stored URL."""
    path = tmp_path / "terminate.bin"
    write_file(path, 4 * MiB)
    storage = tmp_path / "tus-urls.json"
    result = await run_js("tus_upload.mjs", tus_options(small_parts, path, chunkSize=MiB, urlStorage=str(storage),
                                                          abortAfterChunks=1, terminate=True))
    assert result["aborted"] and result["terminated"]
    delete = result["requests"][-1]
    assert delete["method"] == "DELETE" and delete["status"] == 204 and delete["url"] == result["url"]
    assert json.loads(storage.read_text()) == {}
    assert (await upload_row(db, upload_id(result["url"])))["state"] == "terminated"
    async with small_parts.http.head(result["url"], headers=auth("js-user")) as response:
        assert response.status in (404, 410)


async def test_stored_url_of_a_terminated_upload_starts_over(small_parts: Gateway, db: Connection, s3: Any,
                                                             tmp_path: Path) -> None:
    """Resuming a URL the server no longer knows: HEAD answers 4xx, tus-js-client drops it and POSTs anew."""
    path = tmp_path / "stale.bin"
    size = 4 * MiB + 5
    digest = write_file(path, size)
    storage = tmp_path / "tus-urls.json"
    options = tus_options(small_parts, path, chunkSize=MiB, urlStorage=str(storage), resume=True)
    first = await run_js("tus_upload.mjs", {**options, "abortAfterChunks": 1})
    async with small_parts.http.delete(first["url"], headers=auth("js-user")) as response:
        assert response.status == 204
    second = await run_js("tus_upload.mjs", options)
    assert second["previousUploads"] == 1 and second["url"] != first["url"]
    trace = [(r["method"], r["status"]) for r in second["requests"]][:3]
    assert trace[0][0] == "HEAD" and trace[0][1] in (404, 410) and trace[1] == ("POST", 201), trace
    assert second["sentThisRun"] == size
    assert [e["uploadUrl"] for e in json.loads(storage.read_text()).values()] == [second["url"]]
    assert await stored_sha256(db, s3, second["url"]) == digest


async def test_resume_on_another_gateway_instance(stack: StackInfo, db: Connection, s3: Any, tmp_path: Path) -> None:
    """Two gateways share Postgres and S3: start on A, abort, resume the same upload on B."""
    path = tmp_path / "two.bin"
    size = 13 * MiB + 77
    digest = write_file(path, size)
    prefix = f"test-js-{os.urandom(4).hex()}"
    async with running(make_settings(stack, part_size=PART, s3_key_prefix=prefix)) as a, \
            running(make_settings(stack, part_size=PART, s3_key_prefix=prefix)) as b:
        assert a.url != b.url
        first = await run_js("tus_upload.mjs", tus_options(a, path, chunkSize=3 * MiB, abortAfterChunks=2))
        assert first["aborted"] and first["bytesUploaded"] == 6 * MiB  # one part committed, 1 MiB stashed
        on_b = urlunsplit(urlsplit(first["url"])._replace(netloc=urlsplit(b.url).netloc))
        assert on_b != first["url"]
        second = await run_js("tus_upload.mjs", tus_options(b, path, chunkSize=3 * MiB, uploadUrl=on_b))
        assert second["url"] == on_b and second["startOffset"] == 6 * MiB
        assert all(urlsplit(r["url"]).netloc == urlsplit(b.url).netloc for r in second["requests"])
        assert second["bytesUploaded"] == size
        assert await stored_sha256(db, s3, on_b) == digest
        row = await upload_row(db, upload_id(on_b))
        assert row["s3_key"].startswith(prefix)


# --- Uppy ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("uppy", "chunk"), [(5, None), (5, 4 * MiB), (6, None), (6, 4 * MiB)])
async def test_uppy_with_tus_plugin(small_parts: Gateway, db: Connection, s3: Any, tmp_path: Path,
                                    uppy: int, chunk: int | None) -> None:
    """@uppy/tus 5 (tests/js) and 6 (tests/uppy6), the same script."""
    path = tmp_path / "uppy photo.bin"
    size = 9 * MiB + 321
    digest = write_file(path, size)
    modules = str(install_uppy6_packages()) if uppy == 6 else None
    result = await run_js("uppy_upload.mjs", {"endpoint": small_parts.files(), "token": token("uppy-user"),
                                                 "file": str(path), "chunkSize": chunk, "modules": modules})
    assert result["url"].startswith(small_parts.files() + "/")
    assert result["progress"] == size
    assert await stored_sha256(db, s3, result["url"]) == digest
    row = await upload_row(db, upload_id(result["url"]))
    assert row["owner_sub"] == "uppy-user" and row["length"] == size
    metadata = json.loads(row["metadata"])
    assert metadata["filename"] == "uppy photo.bin" and metadata["name"] == "uppy photo.bin"
    assert metadata["filetype"] == "application/octet-stream"
