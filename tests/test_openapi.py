"""The OpenAPI 3.1 document at GET /openapi.json (gateway/http/openapi.py, issue #16).

- it validates as OpenAPI 3.1 (openapi-spec-validator), for the default and a custom base path;
- it describes exactly the JSON routes of the route table: a documented row without a description, or a
  description without its row, fails here;
- its error statuses follow gateway/http/errors.py's STATUS table;
- it is served without a token, cacheable, with an ETag (304 on If-None-Match);
- schemathesis, against a live gateway (real Postgres and SeaweedFS, a valid bearer token), finds no 5xx
  and no answer the document does not describe (status code, content type, body schema, required headers).
  Each operation runs twice: on generated upload ids (the lookup errors) and pinned to real uploads of
  the token's owner (the handlers' own paths). The examples are bounded (EXAMPLES) to stay well under a
  minute on two cores.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import gateway.core.listing as core_listing
from gateway.core.errors import ErrorCode
from gateway.embedded import StackInfo
from gateway.http.errors import STATUS
from gateway.http.openapi import CACHE_CONTROL, OPERATIONS, build, is_documented, split_path
from gateway.http.routes import route_table
from tests.support.gateway import Gateway, make_settings
from tests.support.threaded import ThreadedGateway
from tests.support.tokens import TUS, token

# Per operation, mode (positive, negative) and flavour (generated ids, pinned to a real upload): about 1,400
# requests, ~20 s on two cores. GATEWAY_OPENAPI_EXAMPLES for a longer run.
EXAMPLES = int(os.environ.get("GATEWAY_OPENAPI_EXAMPLES", "20"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


# -- the document itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["/files", "/api/v2/uploads"])
def test_document_is_valid_openapi_31(base: str) -> None:
    document = build(route_table(base), public_url="https://uploads.example")
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on an invalid document; picks the 3.1 validator from `openapi`
    assert f"{base}/{{upload_id}}/parts" in document["paths"]


def test_every_json_route_is_documented_and_nothing_else() -> None:
    routes = route_table("/files")
    documented = [r for r in routes if is_documented(r)]
    # By (method, route name): OPERATIONS has an entry for every documented row, and no other.
    assert {(r.method, r.name) for r in documented} == set(OPERATIONS), (
        "describe new JSON routes in gateway/http/openapi.py OPERATIONS (and drop entries of removed ones)")
    # By (method, path): the built document has every documented row, and only those.
    assert _operations(build(routes)) == {(r.method, split_path(r.path)[0]) for r in documented}
    # What is left out is the header protocols and the preflights.
    assert all(r.tus or r.method == "OPTIONS" for r in routes if r not in documented)


def test_path_templates_keep_the_route_patterns() -> None:
    template, parameters = split_path("/files/{upload_id:[A-Za-z0-9_-]{16,64}}/parts/{number}")
    assert template == "/files/{upload_id}/parts/{number}"
    assert parameters == {"upload_id": "[A-Za-z0-9_-]{16,64}", "number": None}


def test_error_statuses_follow_the_status_table() -> None:
    document = build(route_table("/files"))
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                if "allOf" not in schema:
                    continue
                codes = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
                assert {STATUS[ErrorCode(code)] for code in codes} == {int(status)}, (method, path, status)
            if operation.get("security") != []:  # a token is required: its refusals are documented
                assert {"401", "403"} <= set(operation["responses"]), (method, path)


async def test_served_without_a_token_and_cacheable(gateway: Gateway) -> None:
    async with gateway.http.get(f"{gateway.url}/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert response.headers["Cache-Control"] == CACHE_CONTROL
        etag = response.headers["ETag"]
        served = await response.json()
    assert served == json.loads(json.dumps(build(route_table(gateway.settings.base_path))))
    validate(served)
    async with gateway.http.get(f"{gateway.url}/openapi.json", headers={"If-None-Match": etag}) as response:
        assert response.status == 304
        assert response.headers["ETag"] == etag
        assert await response.read() == b""


# -- schemathesis against a live gateway --------------------------------------------------------------


@pytest.fixture(scope="module")
def live(stack: StackInfo) -> Iterator[ThreadedGateway]:
    # A confirm of a part S3 does not hold retries ListParts for ~2 s; one look keeps the examples fast.
    saved_delays = core_listing.LISTING_RETRY_DELAYS
    core_listing.LISTING_RETRY_DELAYS = ()
    try:
        with ThreadedGateway(make_settings(stack, rate_limit_parts=0, rate_limit_head=0, access_log=False,
                                           body_idle_timeout=5.0)) as gw:
            yield gw
    finally:
        core_listing.LISTING_RETRY_DELAYS = saved_delays


def _targets(gw: ThreadedGateway, headers: dict[str, str]) -> dict[str, str]:
    """Fresh uploads of the token's owner: a deferred tus upload, a Companion upload and its key."""
    created = gw.request("POST", gw.files(), {**headers, **TUS, "Upload-Defer-Length": "1"})
    assert created.status == 201, created.body
    companion = gw.request("POST", "/s3/multipart", {**headers, "Content-Type": "application/json"},
                           json.dumps({"filename": "a.bin", "type": "application/octet-stream"}).encode())
    assert companion.status == 200, companion.body
    location = created.header("Location")
    assert location is not None
    answer = companion.json()
    return {"tus": location.rsplit("/", 1)[-1], "companion": answer["uploadId"], "key": answer["key"]}


def _run(operation: Any, mode: GenerationMode, fixed: dict[str, Any], base_url: str, headers: dict[str, str],
         statuses: Counter[int]) -> str | None:
    """EXAMPLES cases of one operation in one mode, every answer checked; what failed, or None."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode, **fixed))
    def exchange(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, allow_redirects=False,
                                          timeout=30)
        statuses[response.status_code] += 1

    try:
        exchange()
    except Unsatisfiable:  # nothing to negate: no parameters, no body
        assert mode is GenerationMode.NEGATIVE, operation.label
    # One report for every operation, not the first failure only (schemathesis raises its FailureGroup, a
    # BaseExceptionGroup).
    except (Exception, FailureGroup) as exc:
        found = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
        return (f"{operation.label} {mode.value} {fixed or 'generated ids'}: "
                + "\n".join(f"{type(e).__name__}: {e}" for e in found))
    return None


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(live: ThreadedGateway) -> None:
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token(f'openapi-{uuid.uuid4().hex[:8]}', ttl=3600)}"}
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    failures: list[str] = []
    seen: dict[str, Counter[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        targets = _targets(live, headers)  # fresh ones: an earlier operation may have completed or aborted them
        flavours: list[dict[str, Any]] = [{}]
        if "{upload_id}" in operation.path:
            companion = operation.path.startswith("/s3/")
            pinned: dict[str, Any] = {"path_parameters": {"upload_id": targets["companion" if companion else "tus"]}}
            if companion:
                pinned["query"] = {"key": targets["key"]}
            flavours.append(pinned)
        for mode, fixed in itertools.product(GenerationMode, flavours):
            failure = _run(operation, mode, fixed, live.url, headers,
                           seen.setdefault(f"{operation.label} {mode.value}", Counter()))
            if failure is not None:
                failures.append(failure)
    requests = sum(sum(statuses.values()) for statuses in seen.values())
    print(f"schemathesis: {requests} requests in {time.monotonic() - started:.1f} s")
    for label, statuses in seen.items():
        print(f"  {label}: {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures)
    assert requests > 100
