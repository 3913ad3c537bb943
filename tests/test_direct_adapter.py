"""clients/js (the DirectHttpStack for tus-js-client 4) in Node, against a real gateway and SeaweedFS.

tests/browser/adapter_node.mjs runs tus-js-client with the adapter; the gateway sits behind a counting
TCP proxy and S3 behind a counting HTTP proxy (the presigned URLs name it through
`s3_public_endpoint_url`; SigV4 signs the Host header, which the proxy passes on unchanged). So the
tests see where the bytes went: the file's bytes into S3, only headers and JSON into the gateway.
The S3 proxy can also refuse one part with 403, as S3 does with an expired URL.

tests/browser/node_modules is installed from tests/browser/package-lock.json by the session fixture
`browser_packages` (tests/conftest.py; tests/test_browser.py uses it too).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from yarl import URL

from gateway.embedded import StackInfo
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, running, upload_id
from tests.support.js import run_browser_script
from tests.support.node import node_requirement, write_file
from tests.support.proxies import S3Proxy, TcpProxy
from tests.support.storage import stored_sha256
from tests.support.tokens import token

PART = 5 * MiB
SIZE = 23 * MiB + 12_345  # 5 parts: four of 5 MiB and a short last one


needs_node = node_requirement("the JS adapter tests")
pytestmark = needs_node


@dataclass
class Setup:
    gateway: Gateway
    proxy: TcpProxy
    s3_proxy: S3Proxy

    @property
    def endpoint(self) -> str:
        return f"{self.proxy.url}{self.gateway.settings.base_path}"


@contextlib.asynccontextmanager
async def proxied_gateway(stack: StackInfo, **overrides: Any) -> AsyncIterator[Setup]:
    async with S3Proxy(stack.s3_endpoint_url) as s3_proxy:
        settings = make_settings(stack, part_size=PART, s3_public_endpoint_url=s3_proxy.url, **overrides)
        async with running(settings) as gw:
            port = URL(gw.url).port
            assert port is not None
            async with TcpProxy(port) as proxy:
                yield Setup(gw, proxy, s3_proxy)


def assert_bytes_went_to_s3(setup: Setup, size: int, result: dict[str, Any]) -> None:
    # Only headers and small JSON went to the gateway: far less than one part, let alone the file.
    assert setup.proxy.upstream > 0
    assert setup.proxy.upstream < min(size // 50, 256 * 1024), (setup.proxy.upstream, result)
    # ... while S3 received every byte (more when a part was sent again).
    assert setup.s3_proxy.put_bytes >= size, (setup.s3_proxy.put_bytes, size)


def _confirm_requests() -> float:
    """Confirm requests the (in-process) gateway answered so far, batched or one part each."""
    return sum(REGISTRY.get_sample_value("gateway_requests_total", {"route": route, "method": "PUT",
                                                                    "status": "204"}) or 0.0
               for route in ("parts.collection", "parts.one"))


# -- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk_size", "source"), [(None, "stream"), (3 * MiB, "buffer")],
                         ids=["chunk-infinity-file-stream", "chunk-3MiB-buffer"])
async def test_tus_js_client_uploads_straight_to_s3(stack: StackInfo, db: Any, s3: Any, tmp_path: Path,
                                                    browser_packages: Path, chunk_size: int | None,
                                                    source: str) -> None:
    path = tmp_path / "big.bin"
    digest = write_file(path, SIZE)
    async with proxied_gateway(stack) as setup:
        confirms_before = _confirm_requests()
        result = await run_browser_script("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": chunk_size, "parallel": 4, "input": source})
        assert await stored_sha256(db, s3, result["url"]) == digest
        if chunk_size is None:
            # One PATCH, five parts: their confirms share requests (`PUT {upload}/parts`), never one per part.
            assert 1 <= _confirm_requests() - confirms_before <= 3, _confirm_requests() - confirms_before
        assert_bytes_went_to_s3(setup, SIZE, result)
        assert result["events"]["part"] == 5, result
        assert result["events"]["forward"] == 0 and result["events"]["error"] == 0, result
        assert result["progressMax"] == SIZE
        sizes = await db.fetch("select size from upload_parts where upload_id = $1 order by number",
                               upload_id(result["url"]))
        assert [r["size"] for r in sizes] == [PART] * 4 + [SIZE - 4 * PART]


async def test_expired_url_is_signed_again(stack: StackInfo, db: Any, s3: Any, tmp_path: Path,
                                           browser_packages: Path) -> None:
    """S3 refuses part 3 once with 403 (as for an expired URL): the adapter re-signs and PUTs it again."""
    path = tmp_path / "big.bin"
    digest = write_file(path, SIZE)
    async with proxied_gateway(stack) as setup:
        setup.s3_proxy.refuse_once = {3}
        result = await run_browser_script("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": None, "parallel": 2, "input": "stream"})
        assert setup.s3_proxy.refused == [3]
        assert result["events"]["resign"] == 1, result
        assert result["events"]["error"] == 0, result  # tus-js-client never saw a failure
        assert await stored_sha256(db, s3, result["url"]) == digest
        assert_bytes_went_to_s3(setup, SIZE, result)


async def test_abort_and_resume_from_the_servers_offset(stack: StackInfo, db: Any, s3: Any, tmp_path: Path,
                                                        browser_packages: Path) -> None:
    path = tmp_path / "big.bin"
    digest = write_file(path, SIZE)
    async with proxied_gateway(stack) as setup:
        result = await run_browser_script("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": None, "parallel": 1, "input": "stream", "abortAtBytes": PART})
        # The second tus.Upload asked HEAD and went on from a part boundary past 0.
        assert result["resumedFrom"] is not None and 0 < result["resumedFrom"] < SIZE, result
        assert result["resumedFrom"] % PART == 0, result
        assert await stored_sha256(db, s3, result["url"]) == digest
        assert_bytes_went_to_s3(setup, SIZE, result)


@pytest.mark.parametrize(("size", "source", "chunk_size"), [(12 * MiB + 7, "readable", 3 * MiB),
                                                        (10 * MiB, "late-end", 5 * MiB)],
                         ids=["odd-length-stream", "empty-final-patch-on-a-part-boundary"])
async def test_deferred_length(stack: StackInfo, db: Any, s3: Any, tmp_path: Path, browser_packages: Path,
                               size: int, source: str, chunk_size: int) -> None:
    """Upload-Defer-Length with sources of unknown size (5 MiB parts by the creation hint).

    The length reaches the gateway with the sign request of the last part; or, when the data ends on a
    part boundary and tus-js-client declares the length in a final PATCH without a body, that PATCH goes
    to the gateway as is (nothing is left to sign). (tus-js-client 4.3.1's Node StreamSource hangs when
    a stream ends exactly on a chunk boundary, hence the odd size with the real stream.)
    """
    path = tmp_path / "stream.bin"
    digest = write_file(path, size)
    async with proxied_gateway(stack) as setup:
        result = await run_browser_script("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": chunk_size, "parallel": 2, "input": source, "deferred": True, "partSize": PART})
        assert await stored_sha256(db, s3, result["url"]) == digest
        assert_bytes_went_to_s3(setup, size, result)
        assert result["events"]["error"] == 0, result
        assert result["events"]["part"] == -(-size // PART), result
        assert result["events"]["forward"] == (1 if source == "late-end" else 0), result


async def test_crc32c_part_checksums_and_creation_with_upload(stack: StackInfo, db: Any, s3: Any, tmp_path: Path,
                                                               browser_packages: Path) -> None:
    """`checksum: 'crc32c'` asks for Upload-Part-Checksum at creation; S3 checks every part. The first
    chunk of creation-with-upload goes direct as well."""
    path = tmp_path / "sum.bin"
    size = 11 * MiB + 3
    digest = write_file(path, size)
    async with proxied_gateway(stack) as setup:
        result = await run_browser_script("adapter_node.mjs", {
            "endpoint": setup.endpoint, "token": token("adapter-user"), "file": str(path),
            "chunkSize": 6 * MiB, "parallel": 2, "input": "buffer", "checksum": "crc32c",
            "uploadDataDuringCreation": True})
        row = await upload_row(db, upload_id(result["url"]))
        assert row["part_checksum"] == "crc32c"
        assert await stored_sha256(db, s3, result["url"]) == digest
        assert_bytes_went_to_s3(setup, size, result)
        assert result["events"]["error"] == 0, result
