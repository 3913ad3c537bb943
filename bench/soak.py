"""Scale-out soak: `python -m bench.soak` (about 13 minutes here; `--quick`: under 2, run by `make test`).

Three `gateway serve` processes behind haproxy (round robin, no stickiness), a SeaweedFS cluster
(`weed master`, two `weed volume`, `weed filer`, `weed s3` as separate processes) and one PostgreSQL.
Every upload is created first, so all of them are in flight at once (checked in Postgres); then each
client uploads its bytes, starting at a random moment of the fault window, through a mix of paths:
direct with parallel parts, proxy with tus PATCHes of varied sizes, concatenation, IETF draft uploads.
Clients resume as real ones do: after an error, HEAD (proxy, IETF) or `GET …/parts` (direct), then go
on from what the gateway reports. During the window: `kill -9` of a random gateway (restarted at
once) `kills` times, one PostgreSQL restart, one volume server restart, a burst of expired tokens.

After each upload reaches offset = length its download is asked for at once and must answer within
10 s (a completion left by a killed instance is taken over within seconds, docs/architecture.md §3.4).
At the end, after a sweep: every object's sha256 equals its source, every upload completed exactly once
(one `completed` event), none is stuck, no S3 multipart upload lacks a live row, no stash is orphaned.
Prints a table and, last, one line that says whether every object is intact (exit status 1 if not).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import percentile
from gateway.cli import mint_token
from gateway.db.migrate import migrate
from gateway.embedded import REGION, EmbeddedPostgres, EmbeddedSeaweedCluster, free_port, s3_client

SECRET = "soak-secret-" + "s" * 40
AUDIENCE, ISSUER = "soak", "soak"
KiB, MiB = 1024, 1024 * 1024
PART = 5 * MiB  # the part size clients ask for (Upload-Part-Size): S3's minimum, so big uploads stay small
DOWNLOAD_DEADLINE = 10.0
CLIENT_DEADLINE = 300.0  # a client that has not finished by then is reported stuck
OCTETS = {"Content-Type": "application/offset+octet-stream"}
RETRYABLE = {409, 423, 429, 500, 502, 503, 504}
IETF = {"Upload-Draft-Interop-Version": "8"}


@dataclass(frozen=True)
class Plan:
    uploads: int
    kills: int
    window: float  # seconds over which clients start their bytes and faults happen
    expired_burst: int
    connections: int


FULL = Plan(uploads=10_000, kills=100, window=600.0, expired_burst=500, connections=256)
QUICK = Plan(uploads=300, kills=6, window=15.0, expired_burst=50, connections=64)
# Share of uploads per kind (the rest are direct single-part uploads).
MIX = (("proxy", 0.33), ("concat", 0.04), ("ietf", 0.02), ("direct_multi", 0.006))
KINDS = ("direct", *(kind for kind, _ in MIX))


class Failed(Exception):
    pass


# -- processes ------------------------------------------------------------------------------------


class GatewayInstance:
    """`gateway serve` on a fixed port (a restart after kill -9 comes back at the same address)."""

    def __init__(self, index: int, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "GATEWAY_PORT": str(self.port), "GATEWAY_METRICS_PORT": str(free_port())}
        self.log = log_dir / f"gateway-{index}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=self.env,
                                            stdout=subprocess.DEVNULL, stderr=log)

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/healthz", timeout=1).read()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def haproxy_config(port: int, gateways: list[GatewayInstance]) -> str:
    """Round robin, no stickiness. A killed instance refuses connections at once, and a request that
    could not connect is sent to another (`retry-on conn-failure`, `redispatch`), so the health check
    only has to take it out of rotation meanwhile: every second, out after two failed checks, with a
    2 s check timeout (a busy instance on 2 shared cores answers late, not never)."""
    servers = "\n".join(f"    server gw{i} 127.0.0.1:{g.port} check inter 1s fall 2 rise 1"
                        for i, g in enumerate(gateways))
    return f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout check 2s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch
    retry-on conn-failure
frontend uploads
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /healthz
{servers}
"""


def start_haproxy(port: int, gateways: list[GatewayInstance], work: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        raise SystemExit("the soak needs Debian's haproxy: apt-get install -y haproxy (make system-deps does)")
    config = work / "haproxy.cfg"
    config.write_text(haproxy_config(port, gateways))
    with (work / "haproxy.log").open("ab") as log:
        return subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=log)


# -- what the clients saw -------------------------------------------------------------------------


@dataclass
class Observations:
    started: float = field(default_factory=time.monotonic)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # op -> (start, seconds)
    fault_windows: list[tuple[float, float]] = field(default_factory=list)
    download_waits: list[float] = field(default_factory=list)
    slow_downloads: list[tuple[float, str, str, bool]] = field(default_factory=list)  # wait, kind, id, in a fault
    expired_answers: Counter[int] = field(default_factory=Counter)
    kills: int = 0
    bytes: int = 0

    def latency(self, op: str, start: float) -> None:
        self.latencies.setdefault(op, []).append((start, time.monotonic() - start))

    def in_fault(self, moment: float) -> bool:
        return any(a <= moment <= b for a, b in self.fault_windows)


@dataclass
class Upload:
    kind: str
    owner: str
    token: str
    data: bytes
    digest: str
    url: str | None = None
    partials: list[str] = field(default_factory=list)
    done: bool = False


class Client:
    """One simulated client: the requests of its kind, resuming after any error as real clients do."""

    def __init__(self, http: aiohttp.ClientSession, s3: aiohttp.ClientSession, base: str, seen: Observations) -> None:
        self.http, self.s3, self.base, self.seen = http, s3, base, seen

    async def call(self, op: str, method: str, url: str, token: str, ok: tuple[int, ...], *,
                   session: aiohttp.ClientSession | None = None, tus: bool = True,
                   **kwargs: Any) -> tuple[int, Any, bytes]:
        """One request; a retryable failure (connection error, 5xx, 409, 423, 429) raises Retry."""
        headers = {**kwargs.pop("headers", {})}
        if session is None:
            headers["Authorization"] = f"Bearer {token}"
            if tus:
                headers["Tus-Resumable"] = "1.0.0"
        start = time.monotonic()
        try:
            async with (session or self.http).request(method, url, headers=headers, **kwargs) as response:
                body = await response.read()
                status, answer = response.status, response.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.seen.errors[f"{op} {type(exc).__name__}"] += 1
            raise Retry() from None
        finally:
            self.seen.latency(op, start)
        if status in ok:
            return status, answer, body
        self.seen.errors[f"{op} {status}"] += 1
        if status in RETRYABLE:
            raise Retry()
        raise Failed(f"{op} {method} {url}: {status} {body[:300]!r}")

    async def resilient(self, upload: Upload, step: Callable[[], Awaitable[bool]]) -> None:
        """Run `step` (which resyncs with the gateway first) until it reports the upload done."""
        deadline = time.monotonic() + CLIENT_DEADLINE
        attempt = 0
        while True:
            try:
                if await step():
                    return
                attempt = 0
            except Retry:
                attempt += 1
                if time.monotonic() > deadline:
                    raise Failed(f"{upload.kind} upload {upload.url}: not done after {CLIENT_DEADLINE:.0f} s") from None
                await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))

    async def create(self, upload: Upload, headers: dict[str, str]) -> str:
        async def once() -> bool:
            _, answer, _ = await self.call("create", "POST", f"{self.base}/files", upload.token, (201,),
                                           headers=headers)
            upload.url = self.base + "/files/" + answer["Location"].rsplit("/", 1)[-1]
            return True
        await self.resilient(upload, once)
        assert upload.url is not None
        return upload.url

    # -- the paths ------------------------------------------------------------------------------

    async def direct(self, upload: Upload) -> None:
        assert upload.url is not None
        url, data = upload.url, upload.data
        count = max(1, -(-len(data) // PART))

        async def step() -> bool:
            _, _, body = await self.call("parts.list", "GET", f"{url}/parts", upload.token, (200,))
            listing = _json(body)
            if listing["state"] in ("completing", "completed"):
                return True
            have = {p["number"] for p in listing["parts"]}
            missing = [n for n in range(1, count + 1) if n not in have]
            _, _, body = await self.call("sign", "POST", f"{url}/parts", upload.token, (200,),
                                         json={"parts": missing})
            signed = _json(body)["parts"]
            await asyncio.gather(*(self.put_part(upload, p) for p in signed))
            _, answer, _ = await self.call("confirm", "PUT", f"{url}/parts", upload.token, (204,),
                                           json={"parts": missing})
            return int(answer["Upload-Offset"]) == len(data)

        await self.resilient(upload, step)

    async def put_part(self, upload: Upload, part: dict[str, Any]) -> None:
        chunk = upload.data[part["offset"]:part["offset"] + part["length"]]
        await self.call("s3.put", "PUT", part["url"], upload.token, (200,), session=self.s3, data=chunk,
                        headers=part["headers"])

    async def proxy(self, upload: Upload) -> None:
        assert upload.url is not None
        url, data = upload.url, upload.data

        async def step() -> bool:
            _, answer, _ = await self.call("head", "HEAD", url, upload.token, (200,))
            offset = int(answer["Upload-Offset"])
            while offset < len(data):
                size = random.choice((1 * KiB, 7 * KiB, 16 * KiB, 33 * KiB, len(data)))
                _, answer, _ = await self.call("patch", "PATCH", url, upload.token, (204,),
                                               headers={**OCTETS, "Upload-Offset": str(offset)},
                                               data=data[offset:offset + size])
                offset = int(answer["Upload-Offset"])
            return True

        await self.resilient(upload, step)

    async def ietf(self, upload: Upload) -> None:
        """Creation with the whole body (draft -11). The upload's URL comes in a 104 that aiohttp does not
        hand out, so after an error the client creates it again (the first one expires unused)."""
        data = upload.data

        async def create() -> bool:
            _, answer, _ = await self.call(
                "ietf.create", "POST", f"{self.base}/files", upload.token, (200, 201),
                headers={**IETF, "Upload-Complete": "?1", "Content-Type": "application/octet-stream"},
                tus=False, data=data)
            upload.url = self.base + "/files/" + answer["Location"].rsplit("/", 1)[-1]
            return True

        await self.resilient(upload, create)
        assert upload.url is not None

    async def download_ready(self, upload: Upload) -> None:
        """Asked right after the client saw offset = length: must answer 200 within 10 s."""
        assert upload.url is not None
        start = time.monotonic()
        while True:
            try:
                status, _, _ = await self.call("download", "GET", upload.url, upload.token, (200, 409),
                                               headers={"Accept": "application/json"})
                if status == 200:
                    break
            except Retry:
                pass
            if time.monotonic() - start > DOWNLOAD_DEADLINE:
                raise Failed(f"download of {upload.url} not ready {DOWNLOAD_DEADLINE:.0f} s after offset = length")
            await asyncio.sleep(0.2)
        waited = time.monotonic() - start
        self.seen.download_waits.append(waited)
        if waited > 2:
            self.seen.slow_downloads.append((waited, upload.kind, upload.url.rsplit("/", 1)[-1],
                                             self.seen.in_fault(start)))

    async def run(self, upload: Upload, delay: float) -> None:
        await asyncio.sleep(delay)
        if upload.kind == "ietf":
            await self.ietf(upload)
        elif upload.kind == "concat":
            for partial in upload.partials:
                await self.proxy(Upload("proxy", upload.owner, upload.token, _partial_data(upload, partial),
                                        "", url=partial))

            async def final() -> bool:
                _, answer, _ = await self.call(
                    "create", "POST", f"{self.base}/files", upload.token, (201,),
                    headers={"Upload-Concat": "final;" + " ".join(upload.partials)})
                upload.url = self.base + "/files/" + answer["Location"].rsplit("/", 1)[-1]
                return True

            await self.resilient(upload, final)
        elif upload.kind == "proxy":
            await self.proxy(upload)
        else:
            await self.direct(upload)
        await self.download_ready(upload)
        self.seen.bytes += len(upload.data)
        upload.done = True


class Retry(Exception):
    pass


def _json(body: bytes) -> Any:
    return json.loads(body)


def _partial_data(upload: Upload, partial: str) -> bytes:
    half = len(upload.data) // 2
    return upload.data[:half] if upload.partials.index(partial) == 0 else upload.data[half:]


def _kind(rng: random.Random) -> str:
    roll = rng.random()
    for kind, share in MIX:
        if roll < share:
            return kind
        roll -= share
    return "direct"


def _size(kind: str, rng: random.Random) -> int:
    if kind == "direct_multi":
        return 2 * PART + rng.randrange(1, PART)  # three parts, sent in parallel
    return rng.randrange(1 * KiB, 96 * KiB)


# -- the run ------------------------------------------------------------------------------------


async def soak(plan: Plan, work: Path) -> int:
    seen = Observations()
    postgres = EmbeddedPostgres(work / "postgres", port=free_port())
    cluster = EmbeddedSeaweedCluster(work / "seaweedfs")
    database_url = postgres.start()
    endpoint, access_key, secret = cluster.start()
    await migrate(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({
        "GATEWAY_DATABASE_URL": database_url, "GATEWAY_S3_ENDPOINT_URL": endpoint, "GATEWAY_S3_BUCKET": cluster.bucket,
        "GATEWAY_S3_REGION": REGION, "GATEWAY_S3_ACCESS_KEY_ID": access_key, "GATEWAY_S3_SECRET_ACCESS_KEY": secret,
        "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_JWT_AUDIENCE": AUDIENCE, "GATEWAY_JWT_ISSUER": ISSUER,
        "GATEWAY_HOST": "127.0.0.1", "GATEWAY_ACCESS_LOG": "false", "GATEWAY_DB_POOL_MAX": "20",
        "GATEWAY_RATE_LIMIT_PARTS": "0", "GATEWAY_RATE_LIMIT_HEAD": "0",
        "GATEWAY_COMPLETION_RETRY_AFTER": "3", "GATEWAY_SWEEP_INTERVAL": "2",
    })
    gateways = [GatewayInstance(i, env, work) for i in range(3)]
    lb_port = free_port()
    haproxy = None
    try:
        for g in gateways:
            g.start()
        await _until(lambda: all(g.ready() for g in gateways), 60, "the gateways to start")
        haproxy = start_haproxy(lb_port, gateways, work)
        base = f"http://127.0.0.1:{lb_port}"
        await _until(lambda: _lb_ready(base), 20, "haproxy to serve")
        return await _drive(plan, seen, base, gateways, postgres, cluster, database_url, env,
                            (endpoint, access_key, secret))
    finally:
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(10)
        for g in gateways:
            g.stop()
        cluster.stop()
        postgres.stop()


def _lb_ready(base: str) -> bool:
    try:
        urllib.request.urlopen(f"{base}/healthz", timeout=1).read()
    except OSError:
        return False
    return True


async def _until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(ready):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _drive(plan: Plan, seen: Observations, base: str, gateways: list[GatewayInstance],
                 postgres: EmbeddedPostgres, cluster: EmbeddedSeaweedCluster, database_url: str,
                 env: dict[str, str], s3_creds: tuple[str, str, str]) -> int:
    rng = random.Random(20261202)
    owners = max(1, plan.uploads // 10)
    tokens = [mint_token(SECRET, f"soak-{i}", audience=AUDIENCE, issuer=ISSUER, ttl=6 * 3600) for i in range(owners)]
    uploads = []
    for i in range(plan.uploads):
        kind = KINDS[i] if i < len(KINDS) else _kind(rng)  # every kind at least once
        data = rng.randbytes(_size(kind, rng))
        uploads.append(Upload(kind, f"soak-{i % owners}", tokens[i % owners], data, hashlib.sha256(data).hexdigest()))
    connector = aiohttp.TCPConnector(limit=plan.connections)
    timeout = aiohttp.ClientTimeout(total=60, sock_read=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=timeout) as s3:
        client = Client(http, s3, base, seen)
        # 1. Every upload is created before any byte moves: all of them are in flight at once.
        t0 = time.monotonic()
        semaphore = asyncio.Semaphore(plan.connections)

        async def create(upload: Upload) -> None:
            async with semaphore:
                if upload.kind == "concat":
                    half = len(upload.data) // 2
                    for size in (half, len(upload.data) - half):
                        await client.create(upload, {"Upload-Length": str(size), "Upload-Concat": "partial"})
                        assert upload.url is not None
                        upload.partials.append(upload.url)
                    upload.url = None
                elif upload.kind != "ietf":  # an IETF upload is created with its body
                    headers = {"Upload-Length": str(len(upload.data)), "Upload-Part-Size": str(PART)}
                    await client.create(upload, headers)

        await asyncio.gather(*(create(u) for u in uploads))
        created_in = time.monotonic() - t0
        connection = await asyncpg.connect(database_url)
        in_flight = await connection.fetchval("select count(*) from uploads where state = 'active'")
        await connection.close()
        print(f"soak: {plan.uploads} uploads created in {created_in:.1f} s; {in_flight} active at once in Postgres",
              flush=True)

        # 2. Bytes, resumption and faults, together.
        faults = asyncio.create_task(_faults(plan, seen, gateways, postgres, cluster, base, client))
        t1 = time.monotonic()
        progress = asyncio.create_task(_progress(seen, uploads, t1))
        results = await asyncio.gather(*(client.run(u, rng.uniform(0, plan.window)) for u in uploads),
                                       return_exceptions=True)
        await faults
        progress.cancel()
        wall = time.monotonic() - t1
    failures = [r for r in results if isinstance(r, BaseException)]
    # 3. A sweep (orphaned S3 uploads of killed creations are aborted at once), then the checks.
    sweep = subprocess.run([sys.executable, "-m", "gateway.cli", "sweep"], env={**env, "GATEWAY_ORPHAN_GRACE": "0"},
                           capture_output=True, text=True, timeout=120)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    checks = await _check(pool, uploads, s3_creds, cluster.bucket)
    await pool.close()
    _report(plan, seen, uploads, failures, checks, wall, created_in, in_flight, sweep.returncode)
    problems = [str(f) for f in failures[:5]] + [f"{name}: {value}" for name, value in checks.items()
                                                 if name.startswith("bad") and value]
    if sweep.returncode != 0:
        problems.append(f"sweep exited {sweep.returncode}: {sweep.stderr[-500:]}")
    if seen.download_waits and max(seen.download_waits) > DOWNLOAD_DEADLINE:
        problems.append("a download took longer than 10 s to be ready")
    if problems:
        print("soak: FAILED: " + "; ".join(problems))
        return 1
    print(f"soak: all {checks['intact']} objects intact ({plan.uploads} uploads, {seen.kills} kills, "
          f"1 Postgres restart, 1 volume restart, {seen.bytes / MiB:.0f} MiB)")
    return 0


async def _progress(seen: Observations, uploads: list[Upload], started: float) -> None:
    while True:
        await asyncio.sleep(10)
        done = sum(1 for u in uploads if u.done)
        print(f"soak: {time.monotonic() - started:5.0f} s: {done:,} of {len(uploads):,} done, {seen.kills} kills, "
              f"{sum(seen.errors.values()):,} errors resumed", flush=True)


async def _faults(plan: Plan, seen: Observations, gateways: list[GatewayInstance], postgres: EmbeddedPostgres,
                  cluster: EmbeddedSeaweedCluster, base: str, client: Client) -> None:
    """The kills spread over the window, with one Postgres restart, one volume restart and an
    expired-token burst at fixed points of it."""
    rng = random.Random(17)
    start = time.monotonic()
    events: list[tuple[float, str]] = [(plan.window * (i + 0.5) / plan.kills, "kill") for i in range(plan.kills)]
    events += [(plan.window * 0.3, "postgres"), (plan.window * 0.5, "tokens"), (plan.window * 0.7, "volume")]
    for at, what in sorted(events):
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        began = time.monotonic()
        if what == "kill":
            # One instance down at a time (rolling failures, not an outage): wait until all are serving.
            while not all(await asyncio.gather(*(asyncio.to_thread(g.ready) for g in gateways))):
                await asyncio.sleep(0.2)
            victim = rng.choice(gateways)
            began = time.monotonic()
            victim.kill()
            seen.kills += 1
            victim.start()  # restarted at once, serving again a second or two later
            await _window_until_ready(seen, victim, began)
        elif what == "postgres":
            await asyncio.to_thread(postgres.stop)
            await asyncio.to_thread(postgres.start)
            seen.fault_windows.append((began, time.monotonic() + 2))
        elif what == "volume":
            await asyncio.to_thread(cluster.restart_volume, 0)
            seen.fault_windows.append((began, time.monotonic() + 2))
        else:
            await _expired_burst(plan, seen, base, client)


async def _window_until_ready(seen: Observations, gateway: GatewayInstance, began: float) -> None:
    while not await asyncio.to_thread(gateway.ready):
        await asyncio.sleep(0.1)
    seen.fault_windows.append((began, time.monotonic() + 1))  # haproxy's next check brings it back


async def _expired_burst(plan: Plan, seen: Observations, base: str, client: Client) -> None:
    expired = mint_token(SECRET, "soak-expired", audience=AUDIENCE, issuer=ISSUER, ttl=-120)

    async def one() -> None:
        async with client.http.post(f"{base}/files", headers={
                "Authorization": f"Bearer {expired}", "Tus-Resumable": "1.0.0", "Upload-Length": "10"}) as response:
            seen.expired_answers[response.status] += 1

    await asyncio.gather(*(one() for _ in range(plan.expired_burst)), return_exceptions=True)


async def _check(pool: asyncpg.Pool, uploads: list[Upload], s3_creds: tuple[str, str, str],
                 bucket: str) -> dict[str, int]:
    ids = [u.url.rsplit("/", 1)[-1] for u in uploads if u.url]
    rows = {r["id"]: r for r in await pool.fetch(
        "select id, state, s3_key, length from uploads where id = any($1)", ids)}
    events = dict(await pool.fetch(
        "select upload_id, count(*) from events where type = 'completed' and upload_id = any($1) group by upload_id",
        ids))
    client = s3_client(*s3_creds, timeout=30)

    def digest(key: str) -> str:
        return hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()

    done = [u for u in uploads if u.done and u.url]
    with ThreadPoolExecutor(16) as threads:
        stored = list(threads.map(lambda u: digest(rows[u.url.rsplit("/", 1)[-1]]["s3_key"]), done))
    intact = sum(1 for u, d in zip(done, stored, strict=True) if d == u.digest)
    multipart = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    live = {r["multipart_id"] for r in await pool.fetch(
        "select multipart_id from uploads where state = 'active' and multipart_id is not null")}
    stash_objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="stash/").get("Contents", [])]
    stash_rows = {r["s3_key"] for r in await pool.fetch("select s3_key from upload_stash")}
    return {
        "intact": intact,
        "bad_objects": len(done) - intact,
        "bad_not_done": len(uploads) - len(done),
        "bad_stuck": sum(1 for i in ids if i in rows and rows[i]["state"] in ("active", "completing")),
        "bad_completed_twice": sum(1 for count in events.values() if count > 1),
        "bad_completed_no_event": sum(1 for i in ids if rows.get(i) and rows[i]["state"] == "completed"
                                      and events.get(i, 0) == 0),
        "bad_multipart_without_row": sum(1 for m in multipart if m["UploadId"] not in live),
        "bad_orphan_stash": sum(1 for key in stash_objects if key not in stash_rows),
        "abandoned_creations": await pool.fetchval(
            "select count(*) from uploads where owner_sub like 'soak-%' and state = 'active' and not id = any($1)",
            ids),
    }


CHECK_LABELS = {
    "intact": "objects intact (sha256 = source)",
    "bad_objects": "objects not intact",
    "bad_not_done": "uploads a client could not finish",
    "bad_stuck": "uploads stuck (active or completing)",
    "bad_completed_twice": "uploads with more than one `completed` event",
    "bad_completed_no_event": "completed uploads without a `completed` event",
    "bad_multipart_without_row": "S3 multipart uploads without a live row (after the sweep)",
    "bad_orphan_stash": "stash objects without a row",
    "abandoned_creations": "uploads created twice after a lost answer (left to expire)",
}


def _report(plan: Plan, seen: Observations, uploads: list[Upload], failures: list[BaseException],
            checks: dict[str, int], wall: float, created_in: float, in_flight: int, sweep_status: int) -> None:
    kinds = Counter(u.kind for u in uploads)
    print()
    print("| | |\n|---|---|")
    print(f"| uploads | {plan.uploads:,} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) |")
    print(f"| in flight at once | {in_flight:,} active in Postgres after {created_in:.1f} s of creations |")
    print(f"| bytes | {seen.bytes / MiB:,.0f} MiB |")
    print(f"| faults | {seen.kills} × kill -9 (restarted), 1 Postgres restart, 1 volume server restart, "
          f"{sum(seen.expired_answers.values())} expired tokens ({dict(seen.expired_answers)}) |")
    print(f"| wall time (bytes and faults) | {wall:.1f} s |")
    waits = sorted(seen.download_waits)
    if waits:
        print(f"| download ready after offset = length | p50 {percentile(waits, 50):.2f} s, "
              f"p99 {percentile(waits, 99):.2f} s, max {waits[-1]:.2f} s |")
    for waited, kind, upload_id, in_fault in sorted(seen.slow_downloads, reverse=True)[:3]:
        print(f"| slow download | {waited:.1f} s: {kind} upload {upload_id}{' (during a fault)' if in_fault else ''} |")
    print(f"| client failures | {len(failures)} |")
    for name, value in checks.items():
        print(f"| {CHECK_LABELS[name]} | {value:,} |")
    print(f"| sweep | exit {sweep_status} |")
    print()
    print("| errors clients saw (then resumed) | count |\n|---|---|")
    for name, count in sorted(seen.errors.items(), key=lambda item: -item[1]):
        print(f"| {name} | {count:,} |")
    print()
    print("| latency (ms) | p50 all | p99 all | p50 during faults | p99 during faults | n during faults |")
    print("|---|---|---|---|---|---|")
    for op in ("head", "patch", "confirm", "sign", "create", "parts.list", "s3.put"):
        samples = seen.latencies.get(op, [])
        if not samples:
            continue
        every = sorted(s for _, s in samples)
        faulty = sorted(s for t, s in samples if seen.in_fault(t))
        cells = [f"{percentile(every, 50) * 1000:.0f}", f"{percentile(every, 99) * 1000:.0f}"]
        cells += ([f"{percentile(faulty, 50) * 1000:.0f}", f"{percentile(faulty, 99) * 1000:.0f}"] if faulty
                  else ["–", "–"])
        print(f"| {op} | {' | '.join(cells)} | {len(faulty):,} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 uploads, 6 kills (the version `make test` runs)")
    parser.add_argument("--uploads", type=int, help="override the number of uploads")
    parser.add_argument("--kills", type=int, help="override the number of kill -9")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.uploads or args.kills:
        plan = Plan(args.uploads or plan.uploads, args.kills or plan.kills, plan.window, plan.expired_burst,
                    plan.connections)
    # SIGTERM (a CI timeout, Ctrl-C's sibling) stops every server this run started, as the end of a run does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    try:
        status = asyncio.run(soak(plan, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"soak: logs and data in {work}")
    sys.exit(status)


if __name__ == "__main__":
    main()
