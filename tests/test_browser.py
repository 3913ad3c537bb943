"""The demo page (`gateway dev`) in headless Chromium: upload, reload mid-upload, resume, download.

tests/browser/e2e.mjs drives Debian's /usr/bin/chromium with playwright-core (which never downloads a
browser). The gateway serves the page itself (demo_page=True) behind a counting TCP proxy, so the
page's origin is the proxy's; the part PUTs go cross-origin to SeaweedFS, whose bucket CORS allows `*`.
A screenshot of the page mid-upload lands in test-output/browser/ (and in docs/demo-mid-upload.png when
that file is missing or GATEWAY_UPDATE_SCREENSHOTS=1, so a test run does not rewrite a committed file).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.embedded import StackInfo
from gateway.http.demo import setup_demo
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import make_settings, start_gateway, upload_id
from tests.support.js import run_browser_script
from tests.support.node import node_requirement, write_file
from tests.support.proxies import TcpProxy
from tests.support.storage import stored_sha256
from tests.support.tokens import token

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output" / "browser"
DOCS_SCREENSHOT = ROOT / "docs" / "demo-mid-upload.png"
PART = 5 * MiB
SIZE = 50 * 1000 * 1000  # "a 50 MB file": 10 parts of 5 MiB

pytestmark = node_requirement("the browser tests")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="the browser tests need Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)")


@needs_chromium
async def test_demo_page_uploads_resumes_after_reload_and_links_the_object(
        stack: StackInfo, db: Any, s3: Any, tmp_path: Path, browser_packages: Path) -> None:
    path = tmp_path / "holiday-video.bin"
    digest = write_file(path, SIZE)
    proxy = TcpProxy(0)  # its target is set once the gateway runs
    await proxy.start()
    try:
        origin = proxy.url  # the page's origin: the gateway, as the browser sees it
        settings = make_settings(stack, part_size=PART, demo_page=True, cors_origins=(origin,))
        gateways = start_gateway(settings)
        gw = await anext(gateways)
        try:
            port = URL(gw.url).port
            assert port is not None
            proxy.target = ("127.0.0.1", port)
            # Screenshots are written to test-output/ always, to docs/ when asked to (see the docstring).
            screenshots = [str(OUTPUT / "demo-mid-upload.png")]
            if not DOCS_SCREENSHOT.exists() or os.environ.get("GATEWAY_UPDATE_SCREENSHOTS") == "1":
                screenshots.append(str(DOCS_SCREENSHOT))
            result = await run_browser_script("e2e.mjs", {
                "pageUrl": f"{origin}/#token={token('browser-user', ttl=3600)}",
                "file": str(path), "size": SIZE, "partSize": PART, "parallel": 2,
                "throttle": 12 * MiB,  # bytes/s until the reload: the 50 MB take ~4 s
                "screenshots": screenshots, "doneScreenshot": str(OUTPUT / "demo-done.png"),
            }, timeout=240)
            log = "\n".join(result.get("log", []))
            assert "failure" not in result, f"{result['failure']}\n--- page log ---\n{log}"

            before, after = result["before"], result["after"]
            assert after["state"] == "done", (result["status"], log)
            # The reloaded page resumed the same upload from the server's offset, not from 0.
            assert before["uploadUrl"] == after["uploadUrl"], result
            resumed = result["resumedFrom"]
            assert PART <= resumed < SIZE and resumed % PART == 0, result
            assert resumed >= int(before["confirmed"]), result  # S3 kept at least what the page had seen confirmed
            assert await stored_sha256(db, s3, after["uploadUrl"]) == digest
            # tus-js-client dropped its localStorage record on success (removeFingerprintOnSuccess).
            assert result["storage"] == [], result

            # The finished-object link: a presigned S3 GET with the same bytes.
            download = result["download"]
            assert download["status"] == 200, download
            assert download["host"] == URL(stack.s3_endpoint_url).authority
            assert download["size"] == SIZE and download["sha256"] == digest
            assert "holiday-video.bin" in (download["disposition"] or "")

            # The bytes went to S3, not through the gateway: it got the page, JSON and headers.
            assert 0 < proxy.upstream < 512 * 1024, proxy.upstream
            row = await upload_row(db, upload_id(after["uploadUrl"]))
            assert (row["part_size"], row["length"]) == (PART, SIZE)
            for name in screenshots:
                assert Path(name).stat().st_size > 10_000, name
        finally:
            with contextlib.suppress(StopAsyncIteration):
                await anext(gateways)
    finally:
        await proxy.close()


@needs_chromium
async def test_demo_page_on_another_origin_goes_through_the_gateways_cors(
        stack: StackInfo, db: Any, s3: Any, tmp_path: Path, browser_packages: Path) -> None:
    """An app on its own origin: every gateway request (creation, sign, confirm, the download JSON) is
    cross-origin, with preflights and the headers the gateway exposes. 3 MiB PATCHes with 5 MiB parts:
    the adapter holds Blob slices until a part is whole."""
    site = web.Application()
    setup_demo(site)  # the same page and adapter, from a plain static server
    server = TestServer(site, host="127.0.0.1")
    await server.start_server()
    try:
        origin = str(server.make_url("")).rstrip("/")
        size = 12 * MiB + 5
        path = tmp_path / "report.pdf"
        digest = write_file(path, size)
        gateways = start_gateway(make_settings(stack, part_size=PART, cors_origins=(origin,)))
        gw = await anext(gateways)
        try:
            assert URL(gw.url).port != URL(origin).port
            result = await run_browser_script("e2e.mjs", {
                "pageUrl": f"{origin}/#token={token('browser-user', ttl=3600)}&endpoint={quote(gw.files(), safe='')}",
                "file": str(path), "size": size, "partSize": PART, "parallel": 3, "throttle": -1, "chunk": 3 * MiB,
                "reload": False, "screenshots": [],
            }, timeout=180)
            log = "\n".join(result.get("log", []))
            assert "failure" not in result, f"{result['failure']}\n--- page log ---\n{log}"
            assert result["after"]["state"] == "done", (result["status"], log)
            assert result["after"]["uploadUrl"].startswith(gw.files()), result
            assert await stored_sha256(db, s3, result["after"]["uploadUrl"]) == digest
            assert result["download"]["status"] == 200 and result["download"]["sha256"] == digest
        finally:
            with contextlib.suppress(StopAsyncIteration):
                await anext(gateways)
    finally:
        await server.close()


def test_vendored_tus_client_matches_the_tested_one(browser_packages: Path) -> None:
    """gateway/static/vendor/tus.min.js is tus-js-client's dist/tus.min.js plus a license header."""
    vendored = (ROOT / "gateway" / "static" / "vendor" / "tus.min.js").read_text()
    assert vendored.startswith("/*! tus-js-client v4.3.1")
    assert "The MIT License (MIT)" in vendored.split("*/", 1)[0]
    body = vendored.split("*/\n", 1)[1]
    dist = (browser_packages / "node_modules" / "tus-js-client" / "dist" / "tus.min.js").read_text()
    original = "".join(line for line in dist.splitlines(keepends=True)
                       if not line.startswith("//# sourceMappingURL="))
    assert hashlib.sha256(body.encode()).hexdigest() == hashlib.sha256(original.encode()).hexdigest()
