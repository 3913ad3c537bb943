"""`gateway serve --workers N`: a parent process (PID 1 in the image) that runs N workers and keeps them up.

- Workers are spawned (`multiprocessing` with `spawn`: a fresh interpreter each, in its own process group,
  so a terminal's Ctrl-C reaches the parent only). Each runs `gateway.serve` with its own pool, S3 client,
  rate limits and background jobs; they share the API and ops ports through SO_REUSEPORT.
- SIGTERM/SIGINT: forwarded (as SIGTERM) to every worker, which drains (gateway/serve.py). The parent
  waits up to GATEWAY_SHUTDOWN_TIMEOUT + SHUTDOWN_MARGIN, kills what is left, and exits 0 (1 if it had to
  kill a worker).
- A worker that dies unexpectedly is logged and replaced after a backoff: 0.5 s doubling to 30 s, reset
  once a worker of that slot has served for a minute.
- A worker that exits before it is ready (port in use, database unreachable at start) is a failed start.
  After MAX_FAILED_STARTS in a row, with no worker getting ready in between, the parent stops the rest
  and exits 1, so the orchestrator sees a crash rather than a restart loop inside the container.
- Metrics: PROMETHEUS_MULTIPROC_DIR is a fresh directory for the parent's lifetime (removed at exit), so
  any worker's scrape covers all of them; a dead worker's live gauges are removed
  (`mark_process_dead`), its counters keep counting in the totals.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from gateway.config import Settings
from gateway.logs import configure_logging
from gateway.metrics import MULTIPROC_DIR_ENV

log = logging.getLogger("gateway.supervisor")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# A worker that served this long resets its slot's backoff.
STABLE_AFTER = 60.0
MAX_FAILED_STARTS = 5
# Beyond the shutdown timeout: closing the pool, the S3 client and the ops listener.
SHUTDOWN_MARGIN = 5.0


def _worker_main(settings: Settings, log_format: str, ready: Connection, parent_pid: int, restarted: bool) -> None:
    """A worker process: the app, served until SIGTERM; tells the parent once it listens."""
    os.setpgid(0, 0)
    configure_logging(log_format)
    from gateway.app import create_app
    from gateway.metrics import WORKER_RESTARTS
    from gateway.serve import run

    def on_ready() -> None:
        if restarted:
            WORKER_RESTARTS.inc()
        ready.send(os.getpid())
        ready.close()

    try:
        run(create_app(settings), settings, on_ready=on_ready, parent_pid=parent_pid)
    except Exception:
        log.exception("worker (pid %d) stopped by an error", os.getpid())
        raise SystemExit(1) from None


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


@dataclass
class _Worker:
    slot: int
    process: BaseProcess
    ready_conn: Connection | None
    ready_at: float | None = None


class Supervisor:
    def __init__(self, settings: Settings, count: int, log_format: str) -> None:
        self.settings = settings
        self.count = count
        self.log_format = log_format
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, _Worker] = {}
        self.restart_at: dict[int, float] = {}
        self.crashes = [0] * count
        self.failed_starts = 0
        self.signalled: int | None = None
        self.metrics_dir = ""

    def run(self) -> int:
        self.metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        previous_dir = os.environ.get(MULTIPROC_DIR_ENV)
        os.environ[MULTIPROC_DIR_ENV] = self.metrics_dir  # inherited by every worker
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        previous_handlers = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM,
                                                                                           signal.SIGINT)}
        try:
            for slot in range(self.count):
                self._start(slot, restarted=False)
            return self._supervise(wake_r)
        finally:
            for worker in list(self.workers.values()):  # only after an error in the supervisor itself
                worker.process.kill()
                self._reap(worker)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            if previous_dir is None:
                os.environ.pop(MULTIPROC_DIR_ENV, None)
            else:
                os.environ[MULTIPROC_DIR_ENV] = previous_dir

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = signum

    def _start(self, slot: int, *, restarted: bool) -> None:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main, name=f"gateway-worker-{slot}", daemon=True,
            args=(self.settings, self.log_format, send, os.getpid(), restarted))
        process.start()
        send.close()  # the worker holds the other end: EOF once it is gone
        self.workers[slot] = _Worker(slot, process, receive)

    def _supervise(self, wake_r: int) -> int:
        while True:
            if self.signalled is not None:
                log.info("received %s: stopping %d worker(s)", signal.Signals(self.signalled).name,
                         len(self.workers))
                return self._stop(0)
            if self.failed_starts >= MAX_FAILED_STARTS:
                log.error("workers cannot start (%d failed starts in a row, see above): giving up",
                          self.failed_starts)
                return self._stop(1)
            now = time.monotonic()
            for slot, due in sorted(self.restart_at.items()):
                if due <= now:
                    del self.restart_at[slot]
                    self._start(slot, restarted=True)
            timeout = max(0.0, min(self.restart_at.values(), default=now + 60) - now)
            waitables: list[Connection | int] = [wake_r]
            for worker in self.workers.values():
                waitables.append(worker.process.sentinel)
                if worker.ready_conn is not None:
                    waitables.append(worker.ready_conn)
            if wake_r in wait(waitables, timeout):
                while True:  # the signal itself is in self.signalled
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            for worker in list(self.workers.values()):
                self._check_ready(worker)
                if worker.process.exitcode is not None:
                    self._on_exit(worker)

    def _check_ready(self, worker: _Worker) -> None:
        conn = worker.ready_conn
        if conn is None or not conn.poll():
            return
        try:
            conn.recv()
        except EOFError:  # it exited first: _on_exit tells
            conn.close()
            worker.ready_conn = None
            return
        worker.ready_at = time.monotonic()
        self.failed_starts = 0
        log.info("worker %d (pid %s) is serving", worker.slot, worker.process.pid)
        conn.close()
        worker.ready_conn = None

    def _on_exit(self, worker: _Worker) -> None:
        self._reap(worker)
        how = _describe(worker.process.exitcode)
        now = time.monotonic()
        if worker.ready_at is None:
            self.failed_starts += 1
            log.error("worker %d (pid %s) exited before it was ready (%s); %d failed start(s) in a row",
                      worker.slot, worker.process.pid, how, self.failed_starts)
            if self.failed_starts >= MAX_FAILED_STARTS:
                return
        elif now - worker.ready_at >= STABLE_AFTER:
            self.crashes[worker.slot] = 0
        self.crashes[worker.slot] += 1
        delay = min(FIRST_BACKOFF * 2 ** (self.crashes[worker.slot] - 1), MAX_BACKOFF)
        self.restart_at[worker.slot] = now + delay
        log.warning("worker %d (pid %s) died unexpectedly (%s); restarting it in %.1fs", worker.slot,
                    worker.process.pid, how, delay)

    def _reap(self, worker: _Worker) -> None:
        worker.process.join()
        if worker.ready_conn is not None:
            worker.ready_conn.close()
            worker.ready_conn = None
        if worker.process.pid is not None:
            mark_process_dead(worker.process.pid, self.metrics_dir)
        self.workers.pop(worker.slot, None)

    def _stop(self, code: int) -> int:
        """SIGTERM to every worker, wait for their drains, kill what outlives the deadline."""
        self.restart_at.clear()
        for worker in self.workers.values():
            if worker.process.pid is not None and worker.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout + SHUTDOWN_MARGIN
        while self.workers and time.monotonic() < deadline:
            wait([w.process.sentinel for w in self.workers.values()], deadline - time.monotonic())
            for worker in list(self.workers.values()):
                if worker.process.exitcode is not None:
                    self._reap(worker)
                    log.info("worker %d (pid %s) stopped (%s)", worker.slot, worker.process.pid,
                             _describe(worker.process.exitcode))
        for worker in list(self.workers.values()):
            log.error("worker %d (pid %s) still running %.0fs after SIGTERM: killing it", worker.slot,
                      worker.process.pid, self.settings.shutdown_timeout + SHUTDOWN_MARGIN)
            worker.process.kill()
            self._reap(worker)
            code = 1
        return code


def supervise(settings: Settings, workers: int, log_format: str) -> int:
    """Run `workers` worker processes until SIGTERM/SIGINT; the exit status of `gateway serve`."""
    return Supervisor(settings, workers, log_format).run()
