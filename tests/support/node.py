"""Running the real JavaScript clients from pytest: Node detection, pinned npm installs, scripts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import MiB

NODE = shutil.which("node")


def node_major() -> int:
    if NODE is None:
        return 0
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout
    return int(version.strip().lstrip("v").split(".")[0] or 0)


def node_requirement(what: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(node_major() < 20, reason=f"{what} need Node.js 20+ (`node` on PATH)")


def npm_ci(directory: Path, packages: Sequence[str]) -> Path:
    """`directory/node_modules` exactly as its package-lock.json pins it: `npm ci` when missing or stale.
    Never downloads a browser (the browser tests use Debian's /usr/bin/chromium)."""
    lock = directory / "package-lock.json"
    stamp = directory / "node_modules" / ".installed-lock-sha256"
    wanted = hashlib.sha256(lock.read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text().strip() != wanted:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"npm is not installed: it is needed to install {directory}/node_modules (npm ci)")
        env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=directory, capture_output=True,
                              text=True, timeout=600, env=env)
        if done.returncode != 0:
            pytest.fail(f"`npm ci` in {directory} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        stamp.write_text(wanted + "\n")
    for package in packages:
        if not (directory / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"{package} is missing from {directory / 'node_modules'} after npm ci")
    return directory


class NodeFailed(AssertionError):
    def __init__(self, script: str, code: int | None, stderr: str) -> None:
        super().__init__(f"node {script} exited {code}: {stderr.strip()[:4000]}")
        self.code = code
        self.stderr = stderr
        # Scripts may print a JSON object of details as their last stderr line.
        try:
            details = json.loads(stderr.strip().splitlines()[-1])
        except (ValueError, IndexError):
            details = {}
        self.details: dict[str, Any] = details if isinstance(details, dict) else {}


async def run_script(directory: Path, script: str, options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run `directory/script` with JSON options; its last stdout line is the JSON result."""
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE, str(directory / script), json.dumps(options), cwd=directory,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise NodeFailed(script, None, f"still running after {timeout:.0f}s, killed") from None
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    stderr = err.decode(errors="replace")
    if process.returncode != 0:
        raise NodeFailed(script, process.returncode, stderr)
    lines = out.decode().strip().splitlines()
    assert lines, f"node {script} printed nothing; stderr: {stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["_stderr"] = stderr
    return result


def write_file(path: Path, size: int) -> str:
    """A file of random bytes; returns its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, MiB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()
