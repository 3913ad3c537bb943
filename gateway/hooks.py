"""HTTP adapters for the outside world's hooks: webhook delivery (signed) and the pre-create hook."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import Owner
from gateway.core.ports import Event

SIGNATURE_HEADER = "Gateway-Signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: receivers check both and reject old t."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class HttpWebhookSender:
    def __init__(self, session: aiohttp.ClientSession, secret: str, timeout: float) -> None:
        self.session = session
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, url: str, event: Event) -> None:
        body = json.dumps({"id": event.id, "type": event.type, "created_at": event.created_at.isoformat(),
                           "upload": event.payload}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Gateway-Event-Id": str(event.id),
                   "Gateway-Event-Type": event.type, SIGNATURE_HEADER: signature(self.secret, int(time.time()), body)}
        async with self.session.post(url, data=body, headers=headers, timeout=self.timeout) as response:
            if not 200 <= response.status < 300:
                raise RuntimeError(f"answered {response.status}")


class HttpCreateHook:
    """POSTs {owner, length, metadata, claims}; a 2xx may answer {"metadata": {...}} to add, a 4xx refuses the
    upload with its {"message"} passed to the client (403); no answer means 503, never a silent pass."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float) -> None:
        self.session = session
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def before_create(self, owner: Owner, length: int | None, metadata: dict[str, str | None],
                            claims: Mapping[str, Any]) -> dict[str, str | None]:
        request = {"owner": {"iss": owner.issuer, "sub": owner.subject}, "length": length, "metadata": metadata,
                   "claims": dict(claims)}
        try:
            async with self.session.post(self.url, json=request, timeout=self.timeout) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UploadError(ErrorCode.HOOK_UNAVAILABLE, "the upload could not be checked; retry shortly",
                              retry_after=5) from exc
        answer = _json_object(text)
        if 400 <= status < 500:
            message = answer.get("message") if isinstance(answer.get("message"), str) else "upload refused"
            raise UploadError(ErrorCode.HOOK_REJECTED, str(message)[:500])
        if not 200 <= status < 300:
            raise UploadError(ErrorCode.HOOK_UNAVAILABLE, "the upload could not be checked; retry shortly",
                              retry_after=5)
        added = answer.get("metadata") or {}
        if not isinstance(added, dict):
            return {}
        return {str(k): None if v is None else str(v) for k, v in added.items()}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
