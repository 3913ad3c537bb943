"""A terminal progress bar and summary for `gateway upload`."""

from __future__ import annotations

import time
from collections import deque
from typing import TextIO

from gateway.client.direct import UploadResult

BAR_WIDTH = 24
# Rate over the last few seconds: an average since the start hides a link that just slowed down.
RATE_WINDOW = 5.0


def human_bytes(count: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    index = 0
    while count >= 1024 and index < len(units) - 1:
        count /= 1024
        index += 1
    return f"{count:.0f} B" if index == 0 else f"{count:.1f} {units[index]}"


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """One `\\r`-redrawn line with percentage, bytes/s and ETA; silent when the stream is not a TTY."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._samples: deque[tuple[float, int]] = deque()
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        self._samples.append((now, done))
        while now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()
        first_time, first_done = self._samples[0]
        rate = (done - first_done) / (now - first_time) if now > first_time else 0.0
        fraction = done / total if total else 1.0
        filled = int(fraction * BAR_WIDTH)
        eta = human_duration((total - done) / rate) if rate > 0 else "--:--"
        line = (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:6.1%} "
                f"{human_bytes(done)}/{human_bytes(total)} {human_bytes(rate)}/s ETA {eta}")
        self.stream.write(f"\r{line}\x1b[K")  # erase what a longer previous line left behind
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line so what follows starts on its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def summary(path: str, result: UploadResult, elapsed: float) -> str:
    rate = human_bytes(result.sent / elapsed) if elapsed > 0 else "-"
    resumed = f", resumed: {human_bytes(result.length - result.sent)} were already uploaded" if result.resumed else ""
    pending = "; the gateway is still completing it" if result.state != "completed" else ""
    return (f"uploaded {path} ({human_bytes(result.length)}) in {elapsed:.1f} s, "
            f"{rate}/s{resumed}{pending}")
