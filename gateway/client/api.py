"""The gateway's tus and presigned-parts endpoints (docs/architecture.md §4.1, §4.2) as typed calls with retries."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from gateway.client.errors import GatewayError, UploadFailed
from gateway.client.retry import ATTEMPTS, NETWORK_ERRORS, RETRY_STATUSES, backoff, describe

log = logging.getLogger(__name__)

TUS = {"Tus-Resumable": "1.0.0"}
# Generous: the confirm of the last part may run CompleteMultipartUpload inline.
GATEWAY_TIMEOUT = aiohttp.ClientTimeout(total=90, sock_connect=30)
FRESH_MARGIN = 60.0
_STATUS_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 410: "gone"}


@dataclass(frozen=True)
class Plan:
    """Part n covers [(n-1)*part_size, min(n*part_size, length)) (docs/architecture.md §2)."""

    length: int
    part_size: int

    @property
    def count(self) -> int:
        return -(-self.length // self.part_size)

    def offset(self, number: int) -> int:
        return (number - 1) * self.part_size

    def size(self, number: int) -> int:
        return min(self.part_size, self.length - self.offset(number))


@dataclass(frozen=True)
class Status:
    """An upload as `GET {upload}/parts` describes it."""

    state: str
    plan: Plan
    confirmed: frozenset[int]

    def missing(self) -> list[int]:
        return [n for n in range(1, self.plan.count + 1) if n not in self.confirmed]


@dataclass(frozen=True)
class SignedPart:
    number: int
    offset: int
    length: int
    url: str
    headers: dict[str, str]
    deadline: float  # time.monotonic() at which the URL expires
    ttl: float

    def fresh(self) -> bool:
        """Good to start a PUT with: S3 checks expiry when the request starts, and a URL about to
        expire is signed again rather than risking a refused 64 MiB body (the client does not wait
        for 100-continue, which some servers never send, so S3 can only refuse once bytes flow)."""
        return time.monotonic() + min(FRESH_MARGIN, self.ttl / 2) < self.deadline


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self, request: str) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise UploadFailed(f"{request}: the gateway's answer is not a JSON object")
        return value


def _error(request: str, status: int, reason: str | None, body: bytes) -> GatewayError:
    try:
        error = json.loads(body)["error"]
        return GatewayError(status, str(error["code"]), str(error["message"]), request=request,
                            details=error.get("details") if isinstance(error.get("details"), dict) else None)
    except (ValueError, KeyError, TypeError):  # HEAD has no body; a proxy may answer HTML
        return GatewayError(status, _STATUS_CODES.get(status, "http_error"), reason or "no details",
                            request=request)


class GatewayApi:
    def __init__(self, session: aiohttp.ClientSession, token: str | None) -> None:
        self._session = session
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    async def create(self, endpoint: str, length: int, metadata: dict[str, str],
                     part_size_hint: int | None) -> tuple[str, int]:
        """POST the collection; answer the upload URL and its part size."""
        encoded = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in metadata.items())
        headers = {**TUS, "Upload-Length": str(length), "Upload-Metadata": encoded}
        if part_size_hint is not None:
            headers["Upload-Part-Size"] = str(part_size_hint)
        answer = await self._call("POST", endpoint, headers=headers, ok=(201,))
        location, part_size = answer.headers.get("Location"), answer.headers.get("Upload-Part-Size", "")
        if not location or not part_size.isdigit():
            raise UploadFailed(f"POST {URL(endpoint).path}: the 201 lacks Location or Upload-Part-Size")
        # tus allows a relative Location.
        return str(URL(endpoint).join(URL(location))), int(part_size)

    async def length(self, url: str) -> int | None:
        """HEAD: the upload's declared length (None while deferred); 404/410 when it is gone."""
        answer = await self._call("HEAD", url, headers=TUS, ok=(200, 204))
        raw = answer.headers.get("Upload-Length", "")
        return int(raw) if raw.isdigit() else None

    async def status(self, url: str) -> Status:
        request = f"GET {URL(url).path}/parts"
        body = (await self._call("GET", f"{url}/parts", ok=(200,))).json(request)
        try:
            plan = Plan(int(body["length"]), int(body["part_size"]))
            confirmed = frozenset(int(p["number"]) for p in body["parts"])
            return Status(str(body["state"]), plan, confirmed)
        except (KeyError, TypeError, ValueError):
            raise UploadFailed(f"{request}: unexpected answer {body!r:.200}") from None

    async def sign(self, url: str, numbers: list[int]) -> list[SignedPart]:
        """Presigned UploadPart URLs; GatewayError `part_confirmed` names parts S3 already holds."""
        request = f"POST {URL(url).path}/parts"
        received = time.monotonic()
        body = (await self._call("POST", f"{url}/parts", json_body={"parts": numbers}, ok=(200,))).json(request)
        try:
            # A deadline from expires_in, not expires_at: immune to this machine's clock being off.
            ttl = float(body["expires_in"])
            return [SignedPart(int(p["number"]), int(p["offset"]), int(p["length"]), str(p["url"]),
                               {str(k): str(v) for k, v in p["headers"].items()}, received + ttl, ttl)
                    for p in body["parts"]]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UploadFailed(f"{request}: unexpected answer (no parts with number, offset, length, url, "
                               "headers)") from None

    async def confirm(self, url: str, numbers: list[int]) -> None:
        """Tell the gateway these parts are in S3; it checks with ListParts and advances the offset."""
        await self._call("PUT", f"{url}/parts", json_body={"parts": numbers}, ok=(204,))

    async def _call(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                    json_body: Any = None, ok: tuple[int, ...]) -> _Answer:
        request = f"{method} {URL(url).path}"
        failure: UploadFailed = UploadFailed(f"{request}: no attempt made")
        for attempt in range(ATTEMPTS):
            retry_after = None
            try:
                async with self._session.request(method, url, headers={**self._auth, **(headers or {})},
                                                 json=json_body, timeout=GATEWAY_TIMEOUT) as response:
                    answer = _Answer(response.status, response.headers, await response.read())
                    reason = response.reason
            except NETWORK_ERRORS as exc:
                failure = UploadFailed(f"{request}: cannot reach the gateway ({describe(exc)})")
            else:
                if answer.status in ok:
                    return answer
                failure = _error(request, answer.status, reason, answer.body)
                if answer.status not in RETRY_STATUSES:
                    raise failure
                retry_after = answer.headers.get("Retry-After")
            if attempt + 1 < ATTEMPTS:
                delay = backoff(attempt, retry_after)
                log.info("%s; retrying in %.1f s", failure, delay)
                await asyncio.sleep(delay)
        raise failure
