"""The peers the benchmark runs beside the gateway: Node packages installed from npm into a cache
directory (pinned in bench/peers/package.json + package-lock.json), @tus/server, Uppy Companion and the
floor server, each a child process on 127.0.0.1 with its own port."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.embedded import StackInfo, free_port

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"
DEFAULT_CACHE = BENCH_DIR / ".cache" / "node"
SCRIPTS = ("tus_server.mjs", "companion_server.mjs", "tus_upload.mjs")
MIN_NODE = (20, 19)
START_TIMEOUT = 60.0


def node_version() -> tuple[int, ...]:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not on PATH: the benchmark runs its peers with Node >= 20.19")
    text = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return tuple(int(x) for x in text.lstrip("v").split("."))


def ensure_node_peers(cache: Path = DEFAULT_CACHE, log=print) -> Path:  # type: ignore[no-untyped-def]
    """Install the pinned peers into `cache` (once: a stamp holds the hash of package.json + lock) and
    put the .mjs scripts beside node_modules, where Node's ESM resolution finds the packages."""
    if node_version()[:2] < MIN_NODE:
        raise SystemExit(f"Node {'.'.join(map(str, MIN_NODE))} or newer is needed (@uppy/companion, @tus/server)")
    cache.mkdir(parents=True, exist_ok=True)
    manifest = [(PEERS_DIR / name).read_bytes() for name in ("package.json", "package-lock.json")]
    digest = hashlib.sha256(b"\0".join(manifest)).hexdigest()
    stamp = cache / ".installed"
    if not (stamp.exists() and stamp.read_text() == digest and (cache / "node_modules").is_dir()):
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(PEERS_DIR / name, cache / name)
        log(f"installing the peers with npm into {cache} ...")
        started = time.monotonic()
        result = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=cache,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"npm install failed in {cache}:\n{result.stdout}\n{result.stderr}")
        stamp.write_text(digest)
        log(f"  done in {time.monotonic() - started:.0f} s")
    for name in SCRIPTS:
        shutil.copyfile(PEERS_DIR / name, cache / name)
    return cache


def installed_versions(cache: Path = DEFAULT_CACHE) -> dict[str, str]:
    import json

    versions = {}
    for name in json.loads((PEERS_DIR / "package.json").read_text())["dependencies"]:
        meta = cache / "node_modules" / name / "package.json"
        if meta.exists():
            versions[name] = json.loads(meta.read_text())["version"]
    return versions


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def check(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-30:] if self.log.exists() else []
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; last lines of {self.log}:\n"
                               + "\n".join(tail))


def _probe(port: int, method: str, path: str, headers: dict[str, str]) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


@contextmanager
def _server(name: str, argv: list[str], env: dict[str, str], port: int, log_dir: Path,
            probe: tuple[str, str, dict[str, str]], cwd: Path | None = None) -> Iterator[Server]:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
    server = Server(name, f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while _probe(port, *probe) is None:
            server.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within {START_TIMEOUT:.0f} s; see {log}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _node_env(stack: StackInfo, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GATEWAY_"))}
    env.update({
        "BENCH_PORT": str(port), "BENCH_S3_ENDPOINT": stack.s3_endpoint_url, "BENCH_S3_REGION": stack.s3_region,
        "BENCH_S3_BUCKET": stack.s3_bucket, "BENCH_S3_ACCESS_KEY_ID": stack.s3_access_key_id,
        "BENCH_S3_SECRET_ACCESS_KEY": stack.s3_secret_access_key, "NODE_ENV": "production", **extra,
    })
    return env


@contextmanager
def tus_server(cache: Path, stack: StackInfo, log_dir: Path, part_size: int) -> Iterator[Server]:
    port = free_port()
    env = _node_env(stack, port, BENCH_PART_SIZE=str(part_size))
    with _server("tus-server", ["node", str(cache / "tus_server.mjs")], env, port, log_dir,
                 ("OPTIONS", "/files", {"Tus-Resumable": "1.0.0"}), cwd=cache) as server:
        yield server


@contextmanager
def companion_server(cache: Path, stack: StackInfo, log_dir: Path, sdk_default_checksums: bool = False,
                     name: str = "companion") -> Iterator[Server]:
    """Companion's S3 routes; with sdk_default_checksums its AWS SDK keeps requestChecksumCalculation
    WHEN_SUPPORTED (part URLs then carry the CRC32 of an empty body: see companion_server.mjs)."""
    port = free_port()
    scratch = log_dir / f"{name}-files"
    scratch.mkdir(exist_ok=True)
    env = _node_env(stack, port, BENCH_FILE_PATH=str(scratch),
                    BENCH_COMPANION_CHECKSUM="default" if sdk_default_checksums else "when_required")
    with _server(name, ["node", str(cache / "companion_server.mjs")], env, port, log_dir,
                 ("GET", "/metrics", {}), cwd=cache) as server:
        yield server


@contextmanager
def floor_server(stack: StackInfo, log_dir: Path) -> Iterator[Server]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with _server("floor", [sys.executable, "-m", "bench.floor_server", "--dsn", stack.database_url,
                           "--port", str(port)], env, port, log_dir,
                 ("HEAD", "/files/none", {}), cwd=BENCH_DIR.parent) as server:
        yield server


@contextmanager
def all_peers(cache: Path, stack: StackInfo, log_dir: Path, part_size: int) -> Iterator[dict[str, Server]]:
    with ExitStack() as stack_:
        yield {
            "floor": stack_.enter_context(floor_server(stack, log_dir)),
            "tus": stack_.enter_context(tus_server(cache, stack, log_dir, part_size)),
            "companion": stack_.enter_context(companion_server(cache, stack, log_dir)),
        }
