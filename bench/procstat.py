"""CPU seconds and resident memory of any process (the gateway, a Node peer, the floor server) from /proc."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of the process's threads so far (its children not), in nanoseconds from each thread's
    schedstat: /proc/PID/stat counts 10 ms ticks, too coarse for the ~20 ms a whole direct upload of
    1 GiB costs the gateway. Falls back to the ticks where schedstat is missing."""
    tasks = Path(f"/proc/{pid}/task")
    if not (tasks / str(pid) / "schedstat").exists():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    total = 0
    for task in tasks.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except OSError:  # a thread that has just exited
            continue
    return total / 1e9


def _status_kib(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0.0


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS:") / 1024


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the highest RSS over the process's whole life."""
    return _status_kib(pid, "VmHWM:") / 1024


@dataclass
class Usage:
    """What one process spent during a phase."""

    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0  # highest RSS sampled during the phase (every 50 ms)
    start_rss_mib: float = 0.0
    wall_s: float = 0.0


@dataclass
class Meter:
    """Samples the RSS of some processes in a thread while a phase runs, and their CPU time before/after."""

    pids: dict[str, int]
    interval: float = 0.05
    usage: dict[str, Usage] = field(default_factory=dict)

    @contextmanager
    def phase(self) -> Iterator[dict[str, Usage]]:
        usage = {name: Usage(start_rss_mib=rss_mib(pid)) for name, pid in self.pids.items()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        stop = threading.Event()

        def sample() -> None:
            while True:
                for name, pid in self.pids.items():
                    usage[name].peak_rss_mib = max(usage[name].peak_rss_mib, rss_mib(pid))
                if stop.wait(self.interval):
                    return

        thread = threading.Thread(target=sample, daemon=True)
        started = time.monotonic()
        thread.start()
        try:
            yield usage
        finally:
            stop.set()
            thread.join()
            wall = time.monotonic() - started
            for name, pid in self.pids.items():
                usage[name].cpu_s = cpu_seconds(pid) - cpu_before[name]
                usage[name].wall_s = wall
                usage[name].peak_rss_mib = max(usage[name].peak_rss_mib, rss_mib(pid))


def find_pids(*needles: str) -> list[int]:
    """Processes whose command line contains every needle (e.g. "weed", "mini", the data directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(needle in cmdline for needle in needles):
            found.append(int(entry.name))
    return found


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
