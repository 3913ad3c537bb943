"""Logging set-up: one JSON object per line (with the request id) or plain text for humans."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from gateway.http.observability import REQUEST_ID

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """One JSON object per record. It runs for every request's access-log line, so the per-second part of
    the timestamp is formatted once a second and the extra fields are found by one set difference."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float, msecs: float) -> str:
        second = int(created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": REQUEST_ID.get(),
        }
        fields = vars(record)
        for name in sorted(fields.keys() - _STANDARD):
            if not name.startswith("_"):
                entry[name] = fields[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _escape(code: int) -> str:
    return {9: "\\t", 10: "\\n", 13: "\\r"}.get(code, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: what could end a line or move
# the cursor in a terminal or a log viewer.
_CONTROLS = {code: _escape(code) for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message` for humans. A record is exactly one line starting at column 0, so no
    logged value (a request path, a header, an exception message) can forge another record: control
    characters in the line are escaped (`\\r`, `\\n`, `\\x1b`, `\\u2028`); a traceback keeps its lines, each
    indented and escaped the same way."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record).translate(_CONTROLS)
        details = []
        if record.exc_info:
            details.append(self.formatException(record.exc_info))
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        # splitlines() breaks at every line boundary (\r, \x0b, \x85, \u2028 ...), so none survives.
        return "".join([text, *("\n  " + line.translate(_CONTROLS) for d in details for line in d.splitlines())])


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
