"""Requests that mean something else than they seem: the method override, repeated protocol headers,
metadata keys that would split into several.

- **X-HTTP-Method-Override** (tus) is resolved once, before anything that depends on the method: a POST
  naming HEAD, PATCH or DELETE on an upload URL is that request, with exactly that route's checks (its
  rate limit, Tus-Resumable, token), its protocol dispatch (the same headers choose tus or the IETF draft
  as on a direct request) and its metrics/access-log labels. Any other method named there is 405.
- **A protocol header sent twice** is 400 `invalid_request` naming it, on every route and protocol,
  before anything is read or written (first-one-wins would let two readers disagree).
- **Metadata keys** with a space or comma (they would split into several keys in `Upload-Metadata`) are
  refused whichever protocol brings them.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

import pytest
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from gateway.http import tus as tus_wire
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, running, upload_id
from tests.support.tokens import TUS, bearer

DRAFT = {"Upload-Draft-Interop-Version": "8"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def subject() -> str:
    return f"abuse-{uuid.uuid4().hex[:10]}"


async def owner_rows(db: Any, sub: str) -> list[dict[str, Any]]:
    rows = await db.fetch("select * from uploads where owner_sub = $1 order by id", sub)
    return [dict(r) for r in rows]


async def answer(response: Any) -> dict[str, Any]:
    """What a response says, in the terms the tests compare: status, error code, protocol."""
    body = await response.read()
    code = None
    if response.status >= 400 and body:
        document = json.loads(body)
        code = document["code"] if "code" in document and "error" not in document else document["error"]["code"]
    return {"status": response.status, "code": code, "content_type": response.headers.get("Content-Type"),
            "ietf": response.headers.get("Upload-Draft-Interop-Version"),
            "offset": response.headers.get("Upload-Offset")}


# -- 5. X-HTTP-Method-Override ----------------------------------------------------------------------------


async def test_override_head_joins_the_head_rate_limit(stack, db) -> None:  # type: ignore[no-untyped-def]
    """POST + override HEAD used to skip HEAD's bucket (it was checked against the POST row, which has none)."""
    async with running(make_settings(stack, rate_limit_head=0.5)) as gw:  # burst 1: the second HEAD is 423
        sub = subject()
        location = await gw.create(100, subject=sub)
        headers = {**bearer(sub), **TUS}
        async with gw.http.post(location, headers={**headers, "X-HTTP-Method-Override": "HEAD"}) as response:
            assert response.status == 200, await response.text()
        for method, extra in (("POST", {"X-HTTP-Method-Override": "HEAD"}), ("HEAD", {}),
                              ("POST", {"X-HTTP-Method-Override": " head "})):
            async with gw.http.request(method, location, headers={**headers, **extra}) as response:
                assert response.status == 423, (method, extra, response.status)
                assert response.headers["Retry-After"]
        # The bucket is HEAD's alone: DELETE by override is not limited by it.
        async with gw.http.post(location, headers={**headers, "X-HTTP-Method-Override": "DELETE"}) as response:
            assert response.status == 204
        assert (await upload_row(db, upload_id(location)))["state"] == "terminated"


# Header sets a client might send; a direct request and its override must be answered alike.
PROTOCOL_HEADERS = {
    "tus": TUS,
    "ietf": DRAFT,
    "ietf-wrong-version": {"Upload-Draft-Interop-Version": "9"},
    "neither": {},
    "both": {**TUS, **DRAFT},
}


async def _direct_and_override(gw: Gateway, db: Any, method: str, headers: dict[str, str],
                               body: bytes | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    results = []
    for overridden in (False, True):
        sub = subject()
        location = await gw.create(None if method == "PATCH" else 100, subject=sub)
        sent = {**bearer(sub), **headers}
        if overridden:
            sent["X-HTTP-Method-Override"] = method
        async with gw.http.request("POST" if overridden else method, location, headers=sent, data=body) as response:
            said = await answer(response)
        row = await upload_row(db, upload_id(location))
        assert row is not None
        results.append((said, {"state": row["state"], "length": row["length"], "prefix": row["prefix_parts"]}))
    return results


@pytest.mark.parametrize("protocol", sorted(PROTOCOL_HEADERS))
@pytest.mark.parametrize("method", ["HEAD", "DELETE", "PATCH"])
async def test_override_is_exactly_the_direct_request(gateway: Gateway, db, method: str, protocol: str) -> None:  # type: ignore[no-untyped-def]
    """The one rule: the override replaces the method and nothing else. Before, the POST row skipped
    Tus-Resumable for the IETF header but then called the tus handler: override DELETE with
    `Upload-Draft-Interop-Version: 7` and no Tus-Resumable terminated the upload (204) where a DELETE is 412,
    and an IETF append by override was judged by tus's rules (415)."""
    headers = dict(PROTOCOL_HEADERS[protocol])
    body = None
    if method == "PATCH":
        ietf = "Upload-Draft-Interop-Version" in headers
        headers.update({"Content-Type": "application/partial-upload", "Upload-Complete": "?0"} if ietf else
                       {**OCTETS, "Upload-Length": "100"})
        headers["Upload-Offset"] = "0"
        body = b"x" * 10
    (direct, direct_row), (override, override_row) = await _direct_and_override(gateway, db, method, headers, body)
    if method == "HEAD":
        override.pop("code")  # a HEAD answer has no body to read the code from (Content-Type still tells)
        direct.pop("code")
    assert override == direct, (direct, override)
    assert override_row == direct_row
    expected = {"tus": 200 if method == "HEAD" else 204, "ietf": 204, "both": 204, "neither": 412,
                "ietf-wrong-version": 412}[protocol]
    assert direct["status"] == expected, direct
    if protocol in ("ietf", "both") and expected < 300:
        assert direct["ietf"] == "8"  # answered by the draft's handler


@pytest.mark.parametrize("named", ["GET", "PUT", "POST", "OPTIONS", "FOO", "", "HEAD, DELETE"])
async def test_override_with_another_method_is_405(gateway: Gateway, db, named: str) -> None:  # type: ignore[no-untyped-def]
    sub = subject()
    location = await gateway.create(100, subject=sub)
    before = await owner_rows(db, sub)
    async with gateway.http.post(location, headers={**bearer(sub), **TUS, "X-HTTP-Method-Override": named},
                                 data=b"x") as response:
        assert response.status == 405, await response.text()
        assert response.headers["Content-Type"].startswith("application/json")
        assert (await response.json())["error"]["code"] == "method_not_allowed"
        assert response.headers["Allow"] == "DELETE,HEAD,PATCH"
    # A POST without the header is just as unknown there.
    async with gateway.http.post(location, headers={**bearer(sub), **TUS}) as response:
        assert response.status == 405 and (await response.json())["error"]["code"] == "method_not_allowed"
    assert await owner_rows(db, sub) == before


def _requests_total(method: str, status: str) -> float:
    return REGISTRY.get_sample_value("gateway_requests_total",
                                     {"route": "tus.upload", "method": method, "status": status}) or 0.0


async def test_metrics_and_access_log_name_the_effective_method(gateway: Gateway, caplog) -> None:  # type: ignore[no-untyped-def]
    sub = subject()
    location = await gateway.create(100, subject=sub)
    labels = (("HEAD", "200"), ("DELETE", "204"), ("POST", "200"), ("POST", "204"))
    before = {label: _requests_total(*label) for label in labels}
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        for method in ("HEAD", "DELETE"):
            async with gateway.http.post(location, headers={**bearer(sub), **TUS,
                                                            "X-HTTP-Method-Override": method}) as response:
                assert response.status in (200, 204)
    after = {label: _requests_total(*label) for label in labels}
    assert {label: after[label] - before[label] for label in labels} == {
        ("HEAD", "200"): 1, ("DELETE", "204"): 1, ("POST", "200"): 0, ("POST", "204"): 0}
    path = f"/files/{upload_id(location)}"
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access" and path in r.getMessage()]
    assert [line.split()[:3] for line in lines] == [["HEAD", path, "200"], ["DELETE", path, "204"]], lines
    assert all(r.route == "tus.upload" for r in caplog.records if r.name == "gateway.access")  # type: ignore[attr-defined]


# -- 7. a protocol header sent twice ------------------------------------------------------------------------


def twice(base: dict[str, str], name: str, first: str, second: str) -> CIMultiDict[str]:
    headers = CIMultiDict(base)
    headers.popall(name, None)
    headers.add(name, first)
    headers.add(name, second)
    return headers


async def _refused(response: Any, name: str, *, problem: bool = False) -> None:
    assert response.status == 400, (name, response.status, await response.text())
    if problem:
        assert response.headers["Content-Type"] == "application/problem+json"
        document = await response.json(content_type=None)
        assert document["code"] == "invalid_request" and name in document["title"], document
    elif response.method != "HEAD":
        error = (await response.json())["error"]
        assert error["code"] == "invalid_request" and name in error["message"], error
        assert error["details"] == {"header": name}


CREATION_TWICE = [
    ("Upload-Length", "10", str(20 * MiB)),
    ("Upload-Length", "10", "10"),  # even identical copies: one rule, no merging
    ("Upload-Defer-Length", "1", "1"),
    ("Upload-Metadata", f"filename {base64.b64encode(b'a.txt').decode()}", "filetype dGV4dC9odG1s"),
    ("Upload-Part-Size", str(5 * MiB), str(6 * MiB)),
    ("Upload-Part-Checksum", "md5", "sha256"),
    ("Upload-Concat", "partial", "partial"),
    ("Tus-Resumable", "1.0.0", "0.2.2"),
    ("Authorization", "self", "other"),
    ("X-HTTP-Method-Override", "PATCH", "DELETE"),
    ("Upload-Checksum", "sha1 " + base64.b64encode(b"\0" * 20).decode(), "md5 AAAAAAAAAAAAAAAAAAAAAA=="),
]


@pytest.mark.parametrize(("name", "first", "second"), CREATION_TWICE, ids=[f"{c[0]}-{i}" for i, c in
                                                                         enumerate(CREATION_TWICE)])
async def test_repeated_header_on_creation_is_400(gateway: Gateway, db, name: str, first: str, second: str) -> None:  # type: ignore[no-untyped-def]
    sub, other = subject(), subject()
    values = {"self": bearer(sub)["Authorization"], "other": bearer(other)["Authorization"]}
    base = {**bearer(sub), **TUS}
    if name != "Upload-Defer-Length":
        base["Upload-Length"] = "10"
    headers = twice(base, name, values.get(first, first), values.get(second, second))
    body = b"x" * 10 if name == "Upload-Checksum" else None
    if body is not None:
        headers.update(OCTETS)
    async with gateway.http.post(gateway.files(), headers=headers, data=body) as response:
        await _refused(response, name)
    assert await owner_rows(db, sub) == [] and await owner_rows(db, other) == []


@pytest.mark.parametrize(("name", "first", "second"), [
    ("Upload-Offset", "0", "5"),
    ("Upload-Offset", "0", "0"),
    ("Upload-Length", "20", "10"),
    ("Upload-Checksum", "sha1 " + base64.b64encode(b"\0" * 20).decode(), "md5 AAAAAAAAAAAAAAAAAAAAAA=="),
    ("Tus-Resumable", "1.0.0", "1.0.0"),
    ("Authorization", "self", "self"),
])
async def test_repeated_header_on_patch_changes_nothing(gateway: Gateway, db, name: str, first: str,  # type: ignore[no-untyped-def]
                                                        second: str) -> None:
    sub = subject()
    location = await gateway.create(None, subject=sub)
    async with gateway.http.patch(location, data=b"y" * 5, headers={**bearer(sub), **TUS, **OCTETS,
                                                                    "Upload-Offset": "0"}) as response:
        assert response.status == 204 and response.headers["Upload-Offset"] == "5"
    before = await owner_rows(db, sub)
    own = bearer(sub)["Authorization"]
    headers = twice({**bearer(sub), **TUS, **OCTETS, "Upload-Offset": "5"}, name,
                    own if first == "self" else first, own if second == "self" else second)
    for method, extra in (("PATCH", {}), ("POST", {"X-HTTP-Method-Override": "PATCH"})):
        headers.update(extra)
        async with gateway.http.request(method, location, headers=headers, data=b"z" * 5) as response:
            await _refused(response, name)
    assert await owner_rows(db, sub) == before
    async with gateway.http.head(location, headers={**bearer(sub), **TUS}) as response:
        assert response.headers["Upload-Offset"] == "5" and "Upload-Length" not in response.headers


@pytest.mark.parametrize("name", ["Tus-Resumable", "Authorization", "X-HTTP-Method-Override"])
async def test_repeated_header_on_head_is_400(gateway: Gateway, db, name: str) -> None:  # type: ignore[no-untyped-def]
    sub = subject()
    location = await gateway.create(100, subject=sub)
    before = await owner_rows(db, sub)
    base = {**bearer(sub), **TUS}
    value = {"X-HTTP-Method-Override": "HEAD"}.get(name, base.get(name, ""))
    headers = twice(base, name, value, "DELETE" if name == "X-HTTP-Method-Override" else value)
    method = "POST" if name == "X-HTTP-Method-Override" else "HEAD"
    async with gateway.http.request(method, location, headers=headers) as response:
        await _refused(response, name)
    assert await owner_rows(db, sub) == before  # the override did not DELETE either


@pytest.mark.parametrize(("name", "first", "second"), [
    ("Upload-Complete", "?0", "?1"),
    ("Upload-Draft-Interop-Version", "8", "8"),
    ("Upload-Length", "10", "20"),
    ("Content-Disposition", 'attachment; filename="a.txt"', 'attachment; filename="b.html"'),
])
async def test_repeated_header_on_ietf_creation_is_a_problem_document(gateway: Gateway, db, name: str, first: str,  # type: ignore[no-untyped-def]
                                                                      second: str) -> None:
    sub = subject()
    headers = twice({**bearer(sub), **DRAFT, "Upload-Complete": "?0"}, name, first, second)
    async with gateway.http.post(gateway.files(), headers=headers) as response:
        await _refused(response, name, problem=True)
    assert await owner_rows(db, sub) == []


async def test_repeated_offset_on_ietf_append_changes_nothing(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    sub = subject()
    location = await gateway.create(100, subject=sub)
    before = await owner_rows(db, sub)
    headers = twice({**bearer(sub), **DRAFT, "Content-Type": "application/partial-upload", "Upload-Complete": "?0"},
                    "Upload-Offset", "0", "50")
    async with gateway.http.patch(location, headers=headers, data=b"x" * 10) as response:
        await _refused(response, "Upload-Offset", problem=True)
    assert await owner_rows(db, sub) == before


async def test_repeated_authorization_on_the_parts_endpoints_is_400(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    sub = subject()
    location = await gateway.create(100, subject=sub)
    before = await owner_rows(db, sub)
    own = bearer(sub)["Authorization"]
    headers = twice({}, "Authorization", own, bearer(subject())["Authorization"])
    async with gateway.http.post(f"{location}/parts", json={"parts": [1]}, headers=headers) as response:
        await _refused(response, "Authorization")
    async with gateway.http.post(f"{gateway.url}/s3/multipart", json={"filename": "a", "type": "text/plain"},
                                 headers=headers) as response:
        await _refused(response, "Authorization")
    assert await owner_rows(db, sub) == before


# -- 8. metadata keys that would split ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["x dGV4dC9odG1s,filetype", "a b", "a,b", "", "tab\there", "caf\u00e9"])
async def test_companion_metadata_key_with_space_or_comma_is_refused(gateway: Gateway, db, key: str) -> None:  # type: ignore[no-untyped-def]
    """`{"x dGV4dC9odG1s,filetype": "v"}` used to be stored as is and come back from tus HEAD as two keys
    (`x` = "text/html" and `filetype`)."""
    sub = subject()
    body = {"filename": "a.txt", "type": "text/plain", "metadata": {key: "v"}}
    async with gateway.http.post(f"{gateway.url}/s3/multipart", json=body, headers=bearer(sub)) as response:
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]["code"] == "invalid_metadata"
    assert await owner_rows(db, sub) == []


@pytest.mark.parametrize("disposition", [
    'attachment; filename="x dGV4dC9odG1s,filetype dGV4dC9odG1s"',
    "attachment; filename*=UTF-8''x%20dGV4dC9odG1s%2Cfiletype%20dGV4dC9odG1s",
])
async def test_ietf_filename_cannot_smuggle_metadata_keys(gateway: Gateway, db, disposition: str) -> None:  # type: ignore[no-untyped-def]
    """The draft's metadata has fixed keys (filename, filetype); a filename full of separators stays one
    value, and tus HEAD renders it back as one key."""
    sub = subject()
    async with gateway.http.post(gateway.files(), headers={**bearer(sub), **DRAFT, "Upload-Complete": "?0",
                                                           "Content-Type": "text/plain",
                                                           "Content-Disposition": disposition}) as response:
        assert response.status == 201, await response.text()
        location = response.headers["Location"]
    name = "x dGV4dC9odG1s,filetype dGV4dC9odG1s"
    row = await upload_row(db, upload_id(location))
    assert row is not None
    assert json.loads(row["metadata"]) == {"filename": name, "filetype": "text/plain"}
    async with gateway.http.head(location, headers={**bearer(sub), **TUS}) as response:
        assert tus_wire.parse_metadata(response.headers["Upload-Metadata"]) == {"filename": name,
                                                                                "filetype": "text/plain"}
