"""The cheap equivalents on every request's path say exactly what the library calls they replace did."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway import metrics
from gateway.core.errors import ErrorCode, UploadError
from gateway.http.common import http_date
from gateway.http.cors import cors_headers
from gateway.http.observability import new_request_id
from gateway.http.routes import SINGLE_HEADERS, refuse_repeated_headers


def test_http_date_is_format_datetime_usegmt() -> None:
    rnd = random.Random(7)
    first, last = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    span = int((last - first).total_seconds())
    moments = [first, last, datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
               datetime(2024, 2, 29, tzinfo=timezone(timedelta(0)))]
    moments += [first + timedelta(seconds=rnd.randrange(span), microseconds=rnd.randrange(10**6))
                for _ in range(5000)]
    for moment in moments:
        assert http_date(moment) == format_datetime(moment, usegmt=True)
    for naive_or_local in (datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))):
        with pytest.raises(ValueError):
            format_datetime(naive_or_local, usegmt=True)
        with pytest.raises(ValueError):
            http_date(naive_or_local)


def test_request_ids_are_uuid4_hex() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for request_id in ids:
        parsed = uuid.UUID(hex=request_id)
        assert parsed.hex == request_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def _request(pairs: list[tuple[str, str]]) -> web.Request:
    return make_mocked_request("HEAD", "/files/x", headers=CIMultiDict(pairs))


def _refused_header(pairs: list[tuple[str, str]]) -> str | None:
    try:
        refuse_repeated_headers(_request(pairs))
    except UploadError as exc:
        assert exc.code is ErrorCode.INVALID_REQUEST
        assert exc.message == f"the {exc.details['header']} header appears more than once"
        return str(exc.details["header"])
    return None


def test_repeated_headers_name_the_first_in_table_order() -> None:
    base = [("Host", "x"), ("Tus-Resumable", "1.0.0"), ("Authorization", "Bearer a")]
    assert _refused_header(base) is None
    assert _refused_header([*base, ("Accept", "a"), ("accept", "b")]) is None  # not a protocol header
    assert _refused_header([*base, ("authorization", "Bearer b")]) == "Authorization"
    assert _refused_header([*base, ("TUS-RESUMABLE", "1.0.0")]) == "Tus-Resumable"
    # Both repeated: the one earlier in SINGLE_HEADERS is named, whatever order they arrive in.
    assert _refused_header([("Content-Type", "a"), ("Upload-Offset", "1"), ("Content-Type", "b"),
                            ("Upload-Offset", "2")]) == "Upload-Offset"
    for name in SINGLE_HEADERS:
        assert _refused_header([("Host", "x"), (name, "1"), (name.lower(), "1")]) == name


def test_no_cors_origins_means_no_cors_step() -> None:
    assert cors_headers(()) is None
    add = cors_headers(("https://app.example",))
    assert add is not None
    response = web.Response()
    add(make_mocked_request("GET", "/", headers={"Origin": "https://other.example"}), response)
    assert "Access-Control-Allow-Origin" not in response.headers and response.headers["Vary"] == "Origin"


def test_request_metrics_children_are_cached_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_request_children", {})
    monkeypatch.setattr(metrics, "REQUEST_CHILDREN_MAX", 2)

    def total(route: str, status: str) -> float:
        return metrics.REQUESTS.labels(route, "HEAD", status)._value.get()

    before = [total("test.cached", "200"), total("test.cached", "404"), total("test.uncached", "200")]
    for _ in range(3):
        metrics.observe_request("test.cached", "HEAD", 200, 0.001)
        metrics.observe_request("test.cached", "HEAD", 404, 0.001)
        metrics.observe_request("test.uncached", "HEAD", 200, 0.001)  # past the bound: .labels() each time
    assert list(metrics._request_children) == [("test.cached", "HEAD", 200), ("test.cached", "HEAD", 404)]
    assert [total("test.cached", "200"), total("test.cached", "404"), total("test.uncached", "200")] == [
        b + 3 for b in before]
    assert metrics.REQUEST_SECONDS.labels("test.cached", "HEAD")._sum.get() == pytest.approx(0.006)
