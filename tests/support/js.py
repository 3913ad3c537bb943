"""The tests' JavaScript projects (tests/js, tests/browser): pinned installs and their scripts."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tests.support.gateway import Gateway
from tests.support.node import npm_ci, run_script
from tests.support.tokens import token

TESTS = Path(__file__).resolve().parent.parent
JS = TESTS / "js"  # tus-js-client and Uppy (@uppy/tus) in Node
UPPY6 = TESTS / "uppy6"  # Uppy 6: @uppy/aws-s3 with uppySignRequest (Node, Chromium via esbuild), @uppy/tus
BROWSER_DIR = TESTS / "browser"  # the direct adapter in Node, and the demo page in Chromium (playwright-core)
JS_TIMEOUT = 120.0
BROWSER_TIMEOUT = 180.0


@functools.cache
def install_js_packages() -> Path:
    """tests/js/node_modules, pinned by tests/js/package-lock.json."""
    return npm_ci(JS, ("tus-js-client", "@uppy/core", "@uppy/tus"))


@functools.cache
def install_uppy6_packages() -> Path:
    """tests/uppy6/node_modules, pinned by tests/uppy6/package-lock.json."""
    return npm_ci(UPPY6, ("@uppy/core", "@uppy/aws-s3", "@uppy/tus", "esbuild", "playwright-core"))


@functools.cache
def install_browser_packages() -> Path:
    """tests/browser/node_modules, pinned; playwright-core never downloads a browser by itself."""
    return npm_ci(BROWSER_DIR, ("tus-js-client", "playwright-core"))


async def run_js(script: str, options: dict[str, Any], timeout: float = JS_TIMEOUT) -> dict[str, Any]:
    """Run a tests/js script with JSON options; its last stdout line is the JSON result."""
    return await run_script(JS, script, options, timeout)


async def run_browser_script(script: str, options: dict[str, Any], timeout: float = BROWSER_TIMEOUT) -> dict[str, Any]:
    """Run a tests/browser script with JSON options; its last stdout line is the JSON result."""
    return await run_script(BROWSER_DIR, script, options, timeout)


def tus_options(gw: Gateway, path: Path, subject: str = "js-user", **options: Any) -> dict[str, Any]:
    """Options of tests/js/tus_upload.mjs: upload `path` to `gw` as `subject`."""
    return {"endpoint": gw.files(), "token": token(subject), "file": str(path),
            "metadata": {"filename": path.name}, "retryDelays": [0, 200, 500], **options}
