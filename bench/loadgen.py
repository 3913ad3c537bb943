"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending its next request as soon
as the previous answer is in. Runs in its own process (`python -m bench.loadgen < spec.json`), so its
CPU is not measured together with the server's, and reports its own CPU use so a saturated generator
shows (`cpu_util` near 1.0 means it, not the server, may be the limit).

Why not aiohttp's client, or wrk/autocannon: aiohttp's ClientSession spends about 5x more CPU per request
than this (a raw asyncio.Protocol with pre-encoded requests), which on a 2-core machine is CPU taken from
the server under test; wrk hangs on HEAD (it waits for a body the Content-Length announces); autocannon
would add a Node process whose cost we would have to argue about. This one is ~150 lines and handles
HEAD, chunked bodies and `Connection: close`.

Spec (JSON on stdin):
    {"host": "127.0.0.1", "port": 8080, "connections": 64, "warmup": 1.0, "duration": 5.0,
     "requests": [{"method": "HEAD", "path": "/files/x", "headers": {...}, "body": null}, ...],
     "ok": [200], "conn_offset": 0, "conn_total": 64, "watch": {"server": [1234]},
     "watch_trees": {"postgres": 2345}}

Connection c (global index conn_offset + local index) sends requests[(c + k * conn_total) % len] as its
k-th request: with as many requests as connections each connection always sends its own (one client,
one upload); with more, the connections walk through them without overlapping.

Answer (JSON on stdout): count (answers with an ok status that arrived inside the measured window), rps,
statuses, errors (connection failures), latencies_us (of those answers, for merging), cpu_s, cpu_util,
and watched_cpu_util: for each name in "watch" (pids) and "watch_trees" (a process and its children), the
CPU its processes used during the window, in cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
GRACE = 30.0  # seconds after the window during which outstanding answers may still arrive


def _cpu(pid: int) -> float:
    """CPU seconds of a process (0 once it is gone: a Postgres backend may come and go)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(x) for x in children.read().split()]
    except OSError:
        return []


def encode(host: str, port: int, request: dict[str, Any]) -> tuple[bytes, bool]:
    body = request.get("body")
    payload = body.encode() if isinstance(body, str) else (body or b"")
    lines = [f"{request['method']} {request['path']} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (request.get("headers") or {}).items()]
    if payload or request["method"] in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload, request["method"] == "HEAD"


def _chunked_end(buf: bytearray, pos: int) -> int:
    """Index just past a complete chunked body starting at pos, or -1 if more bytes are needed."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if size == 0:  # trailers end with an empty line
            end = buf.find(b"\r\n\r\n", pos - 2)
            return -1 if end < 0 else end + 4
        pos += size + 2
        if pos > len(buf):
            return -1


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.is_head = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(str(exc or "connection closed by the server")))

    def send(self, raw: bytes, is_head: bool) -> asyncio.Future[tuple[int, bool]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.is_head = is_head
        self.transport.write(raw)
        return self.waiter

    def _parse(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        end_of_head = self.buf.find(b"\r\n\r\n")
        if end_of_head < 0:
            return
        head = bytes(self.buf[:end_of_head]).lower()
        status = int(head[9:12])
        close = b"\r\nconnection: close" in head
        start = end_of_head + 4
        if self.is_head or status in (204, 304) or 100 <= status < 200:
            end = start
        elif b"\r\ntransfer-encoding: chunked" in head:
            end = _chunked_end(self.buf, start)
            if end < 0:
                return
        else:
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                eol = head.find(b"\r\n", at + 2)
                length = int(head[at + 17: eol if eol >= 0 else len(head)])
            else:
                length = 0
            end = start + length
            if len(self.buf) < end:
                return
        del self.buf[:end]
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._parse()
            return
        self.waiter.set_result((status, close))


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = spec["host"], int(spec["port"])
    requests = [encode(host, port, r) for r in spec["requests"]]
    total = int(spec.get("conn_total", spec["connections"]))
    offset = int(spec.get("conn_offset", 0))
    ok = set(spec.get("ok", [200, 201, 204]))
    latencies: list[int] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []

    async def connect() -> Connection:
        _, protocol = await loop.create_connection(Connection, host, port)
        return protocol

    connections = await asyncio.gather(*(connect() for _ in range(int(spec["connections"]))))
    started = time.perf_counter()
    window_start = started + float(spec.get("warmup", 1.0))
    window_end = window_start + float(spec["duration"])

    async def drive(index: int, conn: Connection) -> None:
        global_index = offset + index
        k = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= window_end:
                break
            raw, is_head = requests[(global_index + k * total) % len(requests)]
            k += 1
            try:
                status, close = await conn.send(raw, is_head)
            except (ConnectionError, OSError) as exc:
                if window_start <= time.perf_counter() <= window_end:
                    errors.append(str(exc))
                conn = await connect()
                continue
            t1 = time.perf_counter()
            # Answers that arrive inside the window count, whenever they were asked: at high concurrency
            # one answer may take longer than the window itself.
            if window_start <= t1 <= window_end:
                statuses[status] += 1
                if status in ok:
                    latencies.append(int((t1 - t0) * 1e6))
            if close:
                conn = await connect()
        if conn.transport is not None:
            conn.transport.close()

    usage = {}

    watch: dict[str, list[int]] = spec.get("watch", {})
    trees: dict[str, int] = spec.get("watch_trees", {})
    watched: dict[str, float] = {}

    def watched_cpu() -> dict[str, dict[int, float]]:
        pids = {name: list(p) for name, p in watch.items()}
        pids.update({name: [root, *_children(root)] for name, root in trees.items()})
        return {name: {pid: _cpu(pid) for pid in group} for name, group in pids.items()}

    async def mark_cpu() -> None:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        usage["before"] = resource.getrusage(resource.RUSAGE_SELF)
        before = watched_cpu()
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        usage["after"] = resource.getrusage(resource.RUSAGE_SELF)
        after = watched_cpu()
        # A process that appeared during the window (a new Postgres backend) counts whole; one that
        # ended during it is lost (rare: pools keep their connections).
        for name, group in after.items():
            spent = sum(cpu - before[name].get(pid, 0.0) for pid, cpu in group.items() if cpu)
            watched[name] = spent / (window_end - window_start)

    marker = asyncio.create_task(mark_cpu())
    drivers = [asyncio.create_task(drive(i, c)) for i, c in enumerate(connections)]
    done, pending = await asyncio.wait(drivers, timeout=window_end - time.perf_counter() + GRACE)
    for task in pending:
        task.cancel()
    await marker
    for task in done:
        if task.exception() is not None:
            errors.append(repr(task.exception()))
    before, after = usage["before"], usage["after"]
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    duration = window_end - window_start
    return {
        "count": len(latencies), "seconds": duration, "rps": len(latencies) / duration,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": len(errors) + len(pending), "error_sample": errors[:3],
        "latencies_us": latencies, "cpu_s": cpu, "cpu_util": cpu / duration, "watched_cpu_util": watched,
    }


def main() -> None:
    spec = json.load(sys.stdin)
    result = asyncio.run(run(spec))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
