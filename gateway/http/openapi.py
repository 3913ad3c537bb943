"""The OpenAPI 3.1 document of the gateway's JSON endpoints, served at `GET /openapi.json` (no token).

Built in Python from the route table (`gateway.http.routes.route_table`) rather than kept as a YAML/JSON file,
so each fact stays where it already lives:

- the paths, methods, path-parameter patterns, which routes need a token and which join a rate limit come
  from the table's rows (with the deployment's own GATEWAY_BASE_PATH);
- the error body's codes come from `ErrorCode` and their statuses from `gateway.http.errors.STATUS`: an
  operation here names the codes it can answer, and the document groups them by status, so a code whose
  status changes moves with it;
- what is only here: each JSON operation's parameters, bodies and success answers (`OPERATIONS`).

Documented: every row that is neither a tus request (header protocol) nor an OPTIONS preflight. tus and the
IETF draft are described in docs/architecture.md §4.1/§4.3 and left out here (the document says so).
tests/test_openapi.py fails when a documented row lacks an entry in `OPERATIONS` or an entry has no row.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.core.errors import ErrorCode
from gateway.core.model import S3_MAX_PARTS
from gateway.http.errors import _HTTP_CODES, STATUS
from gateway.http.keys import SETTINGS

if TYPE_CHECKING:
    from gateway.http.routes import Route

OPENAPI_VERSION = "3.1.0"
# The document changes only with a deploy (or a restart with other settings): cacheable, briefly.
CACHE_CONTROL = "public, max-age=300"

Json = dict[str, Any]
C = ErrorCode

# -- what every documented route can answer, from its table row ---------------------------------------

# Any route: a protocol header sent twice (`refuse_repeated_headers`).
ANY_ROUTE = (C.INVALID_REQUEST,)
# A route whose row says `auth`.
WITH_TOKEN = (C.UNAUTHORIZED, C.INSUFFICIENT_SCOPE, C.IDENTITY_UNAVAILABLE)
# Codes whose error always carries Retry-After, and those where it may.
RETRY_AFTER_ALWAYS = frozenset({C.RATE_LIMITED, C.UPLOAD_LOCKED, C.DATABASE_UNAVAILABLE, C.STORAGE_UNAVAILABLE,
                                C.IDENTITY_UNAVAILABLE, C.HOOK_UNAVAILABLE, C.PART_NOT_VISIBLE, C.COMPLETING})
RETRY_AFTER_SOMETIMES = frozenset({C.NOT_READY})

# -- codes shared by several operations ---------------------------------------------------------------

JSON_BODY = (C.INVALID_REQUEST, C.REQUEST_TOO_LARGE, C.REQUEST_TIMEOUT)
# `load_owned` / `load_alive`: another owner's upload is a missing one; tombstones are 410.
OWNED = (C.NOT_FOUND, C.DATABASE_UNAVAILABLE)
ALIVE = (*OWNED, C.GONE, C.UPLOAD_EXPIRED, C.UPLOAD_FAILED)
# `UploadService.sign` (§3.2), as the Companion routes call it (no `length`).
SIGN = (*ALIVE, C.UPLOAD_COMPLETED, C.BATCH_TOO_LARGE, C.PATH_CONFLICT, C.INVALID_REQUEST, C.UNKNOWN_PART,
        C.QUOTA_EXCEEDED, C.PART_CONFIRMED, C.CHECKSUM_REQUIRED, C.STORAGE_UNAVAILABLE, C.UPLOAD_NOT_ACTIVE)
# `UploadService.confirm`.
CONFIRM = (*ALIVE, C.UNKNOWN_PART, C.PART_NOT_VISIBLE, C.SIZE_MISMATCH, C.STORAGE_UNAVAILABLE)
# The Companion routes' `key` query parameter (`companion._upload_for`).
KEYED = (C.INVALID_REQUEST, *OWNED)


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _header(description: str, schema: Json | None = None, *, required: bool = True) -> Json:
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


UPLOAD_OFFSET = _header("The upload's confirmed offset: the bytes of its confirmed prefix of parts.",
                        {"type": "string", "pattern": "^[0-9]+$"})
NO_STORE = _header("`no-store`: the answer holds presigned URLs or live state.", {"const": "no-store"})
PART_NUMBER = {"type": "integer", "minimum": 1, "maximum": S3_MAX_PARTS}
KEY_QUERY = {"name": "key", "in": "query", "required": True, "schema": {"type": "string"},
             "description": "The upload's object key, as `POST /s3/multipart` answered it (400 when it is not "
                            "this upload's key)."}


def _companion(summary: str, codes: Iterable[C], ok: Json, *, description: str = "",
               parameters: Sequence[Json] = (KEY_QUERY,), body: Json | None = None) -> Json:
    return _operation("Uppy Companion", summary, codes, ok, description=description, parameters=parameters,
                      body=body)


def _operation(tag: str, summary: str, codes: Iterable[C], responses: Json, *, description: str = "",
               parameters: Sequence[Json] = (), body: Json | None = None, xml_body: str = "",
               binary_body: bool = False) -> Json:
    operation: Json = {"tags": [tag], "summary": summary, "x-error-codes": [code.value for code in codes],
                       "responses": responses}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if xml_body:
        operation["requestBody"] = {"required": True, "description": xml_body,
                                    "content": {"application/xml": {"schema": {"type": "string"}}}}
    if binary_body:
        operation["requestBody"] = {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}}
    return operation


def _xml_ok(description: str) -> Json:
    return {"200": {"description": description, "content": {"application/xml": {"schema": {"type": "string"}}},
                    "headers": {"Cache-Control": NO_STORE}}}


def _ok(description: str, schema: Json, headers: Json | None = None, status: str = "200") -> Json:
    response: Json = {"description": description, "content": _json(schema)}
    if headers:
        response["headers"] = headers
    return {status: response}


# -- the operations: (method, route name) -> what only this document says ------------------------------

OPERATIONS: dict[tuple[str, str], Json] = {
    ("GET", "public.healthz"): _operation(
        "Health", "Liveness: the process answers", (),
        _ok("Alive.", {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})),
    ("GET", "public.readyz"): _operation(
        "Health", "Readiness: Postgres and S3 answer (2 s each) and the instance is not draining", (), {
            **_ok("Ready.", {"type": "object", "required": ["status"], "properties": {"status": {"const": "ready"}}}),
            "503": {"description": "Not ready: draining after SIGTERM, or a dependency failing (named in "
                                   "`failing`, with `Retry-After`).",
                    "headers": {"Retry-After": _header("Seconds (with `unavailable`).", {"type": "string"},
                                                       required=False)},
                    "content": _json(_ref("Readiness"))}}),
    ("GET", "public.openapi"): _operation(
        "Health", "This document", (), {
            **_ok("The OpenAPI 3.1 document.", {"type": "object", "required": ["openapi", "paths"]}, {
                "Cache-Control": _header("Cacheable for a few minutes.", {"const": CACHE_CONTROL}),
                "ETag": _header("A strong validator; send it back in `If-None-Match`.")}),
            "304": {"description": "Not modified (`If-None-Match` named the current ETag).",
                    "headers": {"ETag": _header("The current ETag.")}}},
        parameters=[{"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}]),
    ("GET", "download"): _operation(
        "Downloads", "Download a completed upload (a presigned S3 GET)", (*ALIVE, C.NOT_READY, C.STORAGE_UNAVAILABLE),
        {
            "302": {"description": "Redirect to a presigned GET of the object (valid GATEWAY_DOWNLOAD_TTL, at most "
                                   "5 min, `Content-Disposition: attachment`).",
                    "headers": {"Location": _header("The presigned URL.", {"type": "string", "format": "uri"}),
                                "Cache-Control": NO_STORE}},
            **_ok("With `Accept: application/json`: the presigned URL instead of a redirect.", _ref("Download"),
                  {"Cache-Control": NO_STORE}),
        },
        description="No `Tus-Resumable` needed, so a browser can follow it. An active upload is 409 `not_ready`; "
                    "one being completed is 409 `not_ready` with `Retry-After`.",
        parameters=[{"name": "Accept", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "`application/json` for the JSON answer; anything else redirects."}]),
    # The presigned-parts extension (docs/architecture.md §3.2, §4.2).
    ("POST", "parts.collection"): _operation(
        "Presigned parts", "Sign part URLs (and optionally declare a deferred length)",
        (*JSON_BODY, *SIGN, C.LENGTH_ALREADY_SET, C.MAX_SIZE_EXCEEDED, C.LENGTH_CONFLICT),
        _ok("The signed parts: PUT each body to its `url` with exactly `length` bytes and the listed `headers`.",
            _ref("SignedParts"), {"Upload-Offset": UPLOAD_OFFSET}),
        description="Every check runs before anything is written: batch size, state, part numbers inside the "
                    "plan (with `length` applied), no confirmed part, and a digest per part when the upload "
                    "declared `Upload-Part-Checksum`. An empty `parts` is allowed with `length`.",
        body=_ref("SignRequest")),
    ("PUT", "parts.collection"): _operation(
        "Presigned parts", "Confirm uploaded parts", (*JSON_BODY, *CONFIRM), {
            "204": {"description": "Recorded (idempotent; a completing or completed upload answers its length).",
                    "headers": {"Upload-Offset": UPLOAD_OFFSET}}},
        body=_ref("ConfirmRequest")),
    ("GET", "parts.collection"): _operation(
        "Presigned parts", "List the confirmed parts (reconciled with S3)", (*ALIVE, C.STORAGE_UNAVAILABLE),
        _ok("The upload's state and confirmed parts.", _ref("PartsListing"),
            {"Upload-Offset": UPLOAD_OFFSET, "Cache-Control": NO_STORE})),
    ("PUT", "parts.one"): _operation(
        "Presigned parts", "Confirm one uploaded part", CONFIRM, {
            "204": {"description": "Recorded (idempotent).", "headers": {"Upload-Offset": UPLOAD_OFFSET}}},
        parameters=[{"name": "number", "in": "path", "required": True, "schema": PART_NUMBER,
                     "description": f"The part number, 1..{S3_MAX_PARTS} (anything else is 400 `unknown_part`)."}]),
    # Uppy Companion's S3 multipart routes (§4.4), as @uppy/aws-s3 calls them.
    ("GET", "s3.params"): _companion(
        "Refused: single-request uploads", (), {}, parameters=(),
        description="Always 400 `invalid_request`: configure @uppy/aws-s3 with `shouldUseMultipart: true`."),
    ("GET", "s3.sts"): _companion(
        "Refused: temporary S3 credentials", (), {}, parameters=(),
        description="Always 400 `invalid_request`: the gateway never hands out S3 credentials."),
    ("POST", "s3.multipart"): _companion(
        "Create a multipart upload (deferred length, 5 MiB parts)",
        (*JSON_BODY, C.INVALID_METADATA, C.HOOK_REJECTED, C.HOOK_UNAVAILABLE, C.QUOTA_EXCEEDED,
         C.STORAGE_UNAVAILABLE, C.DATABASE_UNAVAILABLE),
        _ok("The new upload.", _ref("CompanionUpload")), parameters=(), body=_ref("CompanionCreate")),
    ("GET", "parts.s3.upload"): _companion(
        "List the parts S3 holds (for resuming)", (*KEYED, *ALIVE, C.STORAGE_UNAVAILABLE),
        _ok("Every part S3 holds now, as S3 lists it.", {"type": "array", "items": _ref("CompanionPart")},
            {"Cache-Control": NO_STORE})),
    ("DELETE", "parts.s3.upload"): _companion(
        "Abort the upload", (*KEYED, C.UPLOAD_COMPLETED, C.COMPLETING),
        _ok("Aborted (a repeated abort answers the same).", {"type": "object", "maxProperties": 0}),
        description="Like S3, never deletes a finished object: a completed upload is 409 `upload_completed`."),
    ("GET", "parts.s3.batch"): _companion(
        "Sign several part URLs", (*KEYED, *SIGN),
        _ok("A URL per part number.", _ref("CompanionBatch"), {"Cache-Control": NO_STORE}),
        parameters=(KEY_QUERY, {
            "name": "partNumbers", "in": "query", "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]{1,9}(,[0-9]{1,9})*$"},
            "description": "Comma separated part numbers, e.g. `1,2,3` (other numbers are 400 `unknown_part`)."})),
    ("POST", "parts.s3.complete"): _companion(
        "Complete the upload", (*KEYED, *JSON_BODY, *CONFIRM, C.LENGTH_CONFLICT, C.LENGTH_ALREADY_SET,
                                C.MAX_SIZE_EXCEEDED, C.QUOTA_EXCEEDED),
        _ok("Complete, or being completed by S3 (the location answers 409 `not_ready` until then).",
            _ref("CompanionCompleted")),
        description="The length is the sum of the sizes S3 lists (every part but the last full-size); the "
                    "ETags are S3's, never the client's.",
        body=_ref("CompanionComplete")),
    ("GET", "parts.s3.part"): _companion(
        "Sign one part URL", (*KEYED, *SIGN), _ok("The part's URL.", _ref("CompanionSigned"),
                                                  {"Cache-Control": NO_STORE}),
        parameters=(KEY_QUERY, {"name": "part_number", "in": "path", "required": True, "schema": PART_NUMBER})),
    # S3-shaped routes for Uppy 6's @uppy/aws-s3 `signRequest` (gateway/http/s3_api.py): S3's XML answers,
    # gateway JSON errors.
    ("POST", "s3api.create"): _operation(
        "Uppy 6 (S3 API)", "CreateMultipartUpload (deferred length, 5 MiB parts)",
        (C.INVALID_REQUEST, C.INVALID_METADATA, C.HOOK_REJECTED, C.HOOK_UNAVAILABLE, C.QUOTA_EXCEEDED,
         C.STORAGE_UNAVAILABLE, C.DATABASE_UNAVAILABLE),
        _xml_ok("`InitiateMultipartUploadResult` (`Bucket`, `Key`: the gateway's object key, `UploadId`)."),
        description="The request's Content-Type (other than `application/octet-stream`) becomes the file's type.",
        parameters=[{"name": "key", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
                     "description": "The key Uppy proposes; its last segment (without Uppy's `{uuid}-`) names "
                                    "the file."},
                    {"name": "uploads", "in": "query", "required": False, "schema": {"type": "string"},
                     "allowEmptyValue": True, "description": "S3's `?uploads` flag (ignored)."}]),
    ("POST", "s3api.urls"): _operation(
        "Uppy 6 (S3 API)", "Sign UploadPart URLs ahead",
        (*JSON_BODY, *SIGN),
        _ok("A URL per part the upload can reach (the others are left out; the first asked must be within).",
            _ref("S3PartUrls"), {"Cache-Control": NO_STORE}),
        body=_ref("ConfirmRequest")),
    ("GET", "s3api.upload"): _operation(
        "Uppy 6 (S3 API)", "ListParts: what S3 holds (for resuming)", (*ALIVE, C.STORAGE_UNAVAILABLE),
        _xml_ok("`ListPartsResult` with a `Part` (`PartNumber`, `ETag`, `Size`) per part S3 holds.")),
    ("POST", "s3api.upload"): _operation(
        "Uppy 6 (S3 API)", "CompleteMultipartUpload",
        (C.INVALID_REQUEST, C.REQUEST_TOO_LARGE, C.REQUEST_TIMEOUT, *CONFIRM, C.LENGTH_CONFLICT,
         C.LENGTH_ALREADY_SET, C.MAX_SIZE_EXCEEDED, C.QUOTA_EXCEEDED),
        _xml_ok("`CompleteMultipartUploadResult` (`Location`: the download URL, `Bucket`, `Key`)."),
        description="Only the `PartNumber`s of the document count (at most 1 MiB); the ETags are S3's.",
        xml_body="A `CompleteMultipartUpload` document."),
    ("DELETE", "s3api.upload"): _operation(
        "Uppy 6 (S3 API)", "AbortMultipartUpload", (*OWNED, C.UPLOAD_COMPLETED, C.COMPLETING),
        {"204": {"description": "Aborted (a repeated abort answers the same)."}}),
    ("PUT", "s3api.put"): _operation(
        "Uppy 6 (S3 API)", "PutObject: the whole file as the body (through the gateway)",
        (C.INVALID_UPLOAD_LENGTH, *ALIVE, C.INCONSISTENT_LENGTH, C.MODIFY_FINAL, C.OFFSET_MISMATCH, C.PATH_CONFLICT,
         C.QUOTA_EXCEEDED, C.MAX_SIZE_EXCEEDED, C.LENGTH_CONFLICT, C.LENGTH_ALREADY_SET, C.WRITER_PREEMPTED,
         C.REQUEST_TIMEOUT, C.STORAGE_UNAVAILABLE),
        {"200": {"description": "Stored (a repeated PUT of a stored upload answers the same)."}},
        description="Into an upload created with `POST /files/s3` (under the base path); needs `Content-Length`. "
                    "A retried PUT after a drop continues where the upload's offset is.",
        binary_body=True),
}

COMPONENT_SCHEMAS: Json = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "description": "Every error of the gateway (gateway/http/errors.py). Requests carrying "
                       "`Upload-Draft-Interop-Version` get RFC 9457 problem details instead (`Problem`).",
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "description": "A stable, machine-readable code.",
                         "enum": sorted({c.value for c in ErrorCode} | {*_HTTP_CODES.values(), "internal_error"})},
                "message": {"type": "string"},
                "details": {"type": "object", "description": "More about the error, e.g. `parts`."}}}}},
    "Problem": {
        "type": "object", "required": ["type", "title", "status", "code"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                       "code": {"type": "string"}}},
    "Readiness": {
        "type": "object", "required": ["status"],
        "properties": {"status": {"enum": ["draining", "unavailable"]},
                       "failing": {"type": "object", "additionalProperties": {"type": "string"},
                                   "description": "Dependency name -> the exception's type."}}},
    "Download": {
        "type": "object", "required": ["url", "expires_at"],
        "properties": {"url": {"type": "string", "format": "uri"}, "expires_at": {"type": "string"}}},
    "SignRequest": {
        "type": "object",
        "properties": {
            "parts": {"type": "array", "maxItems": 1000, "items": {"oneOf": [
                PART_NUMBER,
                {"type": "object", "required": ["number"],
                 "properties": {"number": PART_NUMBER,
                                "checksum": {"type": "string", "description": "The part's base64 digest in the "
                                             "upload's Upload-Part-Checksum algorithm."}}}]},
                      "description": "Non-empty, unless `length` is given."},
            "length": {"type": "integer", "minimum": 0, "description": "Declares a deferred upload's length "
                                                                       "(once)."}}},
    "SignedParts": {
        "type": "object", "required": ["offset", "length", "part_size", "expires_at", "expires_in", "parts"],
        "properties": {
            "offset": {"type": "integer", "minimum": 0},
            "length": {"type": ["integer", "null"], "minimum": 0},
            "part_size": {"type": "integer", "minimum": 1},
            "expires_at": {"type": "string", "description": "UTC, `YYYY-MM-DDTHH:MM:SSZ`."},
            "expires_in": {"type": "integer", "minimum": 1, "description": "Seconds."},
            "parts": {"type": "array", "items": {
                "type": "object", "required": ["number", "offset", "length", "method", "url", "headers"],
                "properties": {"number": PART_NUMBER, "offset": {"type": "integer", "minimum": 0},
                               "length": {"type": "integer", "minimum": 0}, "method": {"const": "PUT"},
                               "url": {"type": "string", "format": "uri"},
                               "headers": {"type": "object", "additionalProperties": {"type": "string"},
                                           "description": "Headers the PUT must carry (its checksum)."}}}}}},
    "ConfirmRequest": {
        "type": "object", "required": ["parts"],
        "properties": {"parts": {"type": "array", "minItems": 1, "items": PART_NUMBER}}},
    "PartsListing": {
        "type": "object", "required": ["offset", "length", "part_size", "state", "parts"],
        "properties": {
            "offset": {"type": "integer", "minimum": 0},
            "length": {"type": ["integer", "null"], "minimum": 0},
            "part_size": {"type": "integer", "minimum": 1},
            "state": {"enum": ["active", "completing", "completed"]},
            "parts": {"type": "array", "items": {
                "type": "object", "required": ["number", "size", "etag", "checksum"],
                "properties": {"number": PART_NUMBER, "size": {"type": "integer", "minimum": 0},
                               "etag": {"type": "string"}, "checksum": {"type": ["string", "null"]}}}}}},
    "S3PartUrls": {
        "type": "object", "required": ["expires_in", "urls"],
        "properties": {"expires_in": {"type": "integer", "minimum": 1, "description": "Seconds."},
                       "urls": {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
                                "additionalProperties": {"type": "string", "format": "uri"}}}},
    "CompanionCreate": {
        "type": "object", "required": ["filename", "type"],
        "properties": {"filename": {"type": "string", "minLength": 1}, "type": {"type": "string"},
                       "metadata": {"type": ["object", "null"], "description": "Uppy's meta; kept as upload "
                                                                                "metadata."}}},
    "CompanionUpload": {
        "type": "object", "required": ["uploadId", "key", "bucket"],
        "properties": {"uploadId": {"type": "string"}, "key": {"type": "string"}, "bucket": {"type": "string"}}},
    "CompanionPart": {
        "type": "object", "required": ["PartNumber", "Size", "ETag"],
        "properties": {"PartNumber": PART_NUMBER, "Size": {"type": "integer", "minimum": 0},
                       "ETag": {"type": "string"}}},
    "CompanionBatch": {
        "type": "object", "required": ["presignedUrls"],
        "properties": {"presignedUrls": {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
                                         "additionalProperties": {"type": "string", "format": "uri"}}}},
    "CompanionSigned": {
        "type": "object", "required": ["url", "expires"],
        "properties": {"url": {"type": "string", "format": "uri"},
                       "expires": {"type": "integer", "description": "Seconds."}}},
    "CompanionComplete": {
        "type": "object", "required": ["parts"],
        "properties": {"parts": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["PartNumber", "ETag"],
            "properties": {"PartNumber": {"type": "integer"}, "ETag": {"type": "string"}}}}}},
    "CompanionCompleted": {
        "type": "object", "required": ["location", "key", "bucket"],
        "properties": {"location": {"type": "string", "format": "uri"}, "key": {"type": "string"},
                       "bucket": {"type": "string"}}},
}

DESCRIPTION = """\
The JSON endpoints of the tus S3 gateway: the presigned-parts extension, downloads, the Uppy Companion
S3 multipart routes, the S3-shaped routes for Uppy 6's `@uppy/aws-s3` (S3 XML answers) and the health
probes.

Left out: the tus 1.0.0 and IETF resumable-upload requests on the upload collection and upload URLs
(`POST`, `HEAD`, `PATCH`, `DELETE`, `OPTIONS`), which are header protocols described by their own
specifications (docs/architecture.md §4.1, §4.3), and the CORS preflights (`OPTIONS`) of every route.

Every error answers `{"error": {"code", "message", "details"?}}`; each operation lists the codes it can
answer under their status. Every response carries `Tus-Resumable: 1.0.0` and `X-Request-Id`.
"""


def is_documented(route: Route) -> bool:
    """JSON routes: everything but tus requests (header protocols) and preflights."""
    return not route.tus and route.method != "OPTIONS"


_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::)?")


def split_path(path: str) -> tuple[str, dict[str, str | None]]:
    """An aiohttp path (`/files/{upload_id:[A-Za-z0-9_-]{16,64}}`) as an OpenAPI template (`/files/{upload_id}`)
    and its parameters' regexes (None: aiohttp's default, one path segment)."""
    template, parameters, at = [], {}, 0
    while (match := _PARAMETER.search(path, at)) is not None:
        template.append(path[at:match.start()])
        name, depth, end = match.group(1), 1, match.end()
        pattern_start = end
        while depth:
            depth += {"{": 1, "}": -1}.get(path[end], 0)
            end += 1
        parameters[name] = path[pattern_start:end - 1] if match.group(0).endswith(":") else None
        template.append(f"{{{name}}}")
        at = end
    template.append(path[at:])
    return "".join(template), parameters


def _error_responses(codes: Iterable[C]) -> Json:
    by_status: dict[int, list[C]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(STATUS[code], []).append(code)
    responses: Json = {}
    for status, group in sorted(by_status.items()):
        names = [code.value for code in group]
        error = {"allOf": [_ref("Error"), {"properties": {"error": {"properties": {"code": {"enum": names}}}}}]}
        response: Json = {"description": ", ".join(f"`{name}`" for name in names),
                          "content": {**_json(error), "application/problem+json": {"schema": _ref("Problem")}}}
        headers: Json = {}
        if any(code in RETRY_AFTER_ALWAYS or code in RETRY_AFTER_SOMETIMES for code in group):
            headers["Retry-After"] = _header("Seconds to wait before retrying.", {"type": "string",
                                                                                  "pattern": "^[0-9]+$"},
                                             required=all(code in RETRY_AFTER_ALWAYS for code in group))
        if C.UNAUTHORIZED in group or C.INSUFFICIENT_SCOPE in group:
            headers["WWW-Authenticate"] = _header("`Bearer error=...`", required=status == 401)
        if headers:
            response["headers"] = headers
        responses[str(status)] = response
    return responses


def _path_parameter(name: str, pattern: str | None) -> Json:
    schema: Json = {"type": "string", "pattern": f"^{pattern}$"} if pattern else {"type": "string"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def build(routes: Sequence[Route], *, public_url: str = "") -> Json:
    """The document for these routes (the route table with its base path). Documented routes without an
    entry in OPERATIONS are left out (tests/test_openapi.py catches that), so a route added without its
    description never breaks serving the document."""
    paths: Json = {}
    for route in routes:
        described = OPERATIONS.get((route.method, route.name))
        if not is_documented(route) or described is None:
            continue
        template, patterns = split_path(route.path)
        operation = json.loads(json.dumps(described))  # a copy: the table is shared
        codes = [C(value) for value in operation.pop("x-error-codes")]
        codes = [*ANY_ROUTE, *(WITH_TOKEN if route.auth else ()), *codes]
        if route.limit is not None:
            codes.append(route.limit.code)
        if not route.auth:
            operation["security"] = []
        operation["operationId"] = f"{route.method.lower()}.{route.name}"
        given = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
        operation["parameters"] = [_path_parameter(name, pattern) for name, pattern in patterns.items()
                                   if name not in given] + operation.get("parameters", [])
        if not operation["parameters"]:
            del operation["parameters"]
        for status, response in _error_responses(codes).items():
            operation["responses"].setdefault(status, response)
        paths.setdefault(template, {})[route.method.lower()] = operation
    document: Json = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "tus S3 gateway", "version": _package_version(), "description": DESCRIPTION,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "paths": paths,
        "components": {
            "schemas": COMPONENT_SCHEMAS,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "A JWT of a configured issuer (docs/architecture.md §4.5); the owner is (iss, sub)."}},
        },
        "security": [{"bearer": []}],
    }
    if public_url:
        document["servers"] = [{"url": public_url}]
    return document


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tus-s3-gateway")
    except PackageNotFoundError:
        return "0.0.0"


@functools.lru_cache(maxsize=8)
def encoded(base_path: str, public_url: str) -> tuple[bytes, str]:
    """The document's bytes and ETag for these settings, built once."""
    from gateway.http.routes import route_table  # routes.py imports this module for its handler

    body = json.dumps(build(route_table(base_path), public_url=public_url), separators=(",", ":")).encode()
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


async def serve(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body, etag = encoded(settings.base_path, settings.public_url)
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag}
    if etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)
