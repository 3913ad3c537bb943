"""What the client raises: one exception type whose message a person can act on."""

from __future__ import annotations

from typing import Any


class UploadFailed(Exception):
    """The upload cannot go on; `str()` is a sentence a CLI can print as is."""


class GatewayError(UploadFailed):
    """The gateway refused a request (after retries when the refusal was transient)."""

    def __init__(self, status: int, code: str, message: str, *, request: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{request} answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.details = details or {}

    @property
    def parts(self) -> list[int]:
        """The part numbers an error names (`part_confirmed`, `part_not_visible`)."""
        return [n for n in self.details.get("parts", []) if isinstance(n, int)]
