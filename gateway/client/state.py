"""Which upload URL belongs to which local file, so a new run resumes instead of starting over."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from gateway.client.errors import UploadFailed


def default_state_file() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "gateway-upload" / "state.json"


def fingerprint(path: Path, stat: os.stat_result, endpoint: str) -> str:
    """Like tus-js-client's: the same file (path, size, mtime) sent to the same endpoint.

    A file edited since the last run gets a new fingerprint, so stale parts are never resumed.
    """
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{endpoint}"


class ResumeState:
    """A small JSON map fingerprint -> upload URL, rewritten atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str) -> str | None:
        entry = self._load().get(key)
        return entry.get("url") if isinstance(entry, dict) else None

    def put(self, key: str, url: str) -> None:
        entries = self._load()
        entries[key] = {"url": url}
        self._save(entries)

    def forget(self, key: str) -> None:
        entries = self._load()
        if entries.pop(key, None) is not None:
            self._save(entries)

    def _load(self) -> dict[str, object]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # missing, unreadable or corrupt: resuming is an optimisation, start over
        return entries if isinstance(entries, dict) else {}

    def _save(self, entries: dict[str, object]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a crash or a concurrent run never leaves a half-written file.
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(entries, out, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise UploadFailed(f"cannot write the resume state {self.path}: {exc.strerror or exc}") from None
