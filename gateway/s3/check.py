"""`gateway s3 check`: probe the configured bucket for every S3 capability the gateway relies on.

Each probe is one entry of `PROBES` and works on keys of its own under `{prefix}/_check/<random>/`; the
multipart uploads and objects it creates are removed at the end, whatever happened (the last row says
so). Control calls go through the gateway's aiobotocore client, presigned requests through aiohttp with
URLs from the gateway's own signer (`S3PartSigner` over `make_signer`) in the exact shape clients get,
signed for GATEWAY_S3_ENDPOINT_URL: the server's behaviour is probed, not the public endpoint's route.

A probe returns its detail (a ✔ row), raises `Failed` (✗, followed by the probe's advice) or
`NotApplicable` (a "not applicable" row). A failure in a step whose own row already failed shows as "not
tested" instead of repeating it. The bucket configuration (CORS, lifecycle) is judged by pure functions
over what S3 returns.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError
from yarl import URL

from gateway.config import Settings
from gateway.core.model import PartChecksum
from gateway.core.ports import PartToSign
from gateway.core.uploads import CHECKSUM_HEADERS
from gateway.s3.adapters import make_signer, s3_adapters
from gateway.s3.client import error_code, object_headers
from gateway.s3.presign import S3PartSigner, content_disposition
from gateway.s3.setup import (
    CORS_ALLOWED_HEADERS,
    DAY,
    cors_rule,
    lifecycle_days,
    lifecycle_rules,
    stash_prefix,
    upload_prefix,
)

PROBE_TIMEOUT = 60.0
URL_TTL = 300
BODY_SIZE = 1024
MARKS = {True: "✔", False: "✗", None: "–"}
SETUP = "run gateway s3 setup"
NO_SUCH_UPLOAD = ("NoSuchUpload", "NoSuchKey")


class CheckError(Exception):
    """The check cannot start (settings); the message says why."""


class Failed(Exception):
    """The capability is missing. `step`: the S3 call that failed, when it was not the probe's verdict."""

    def __init__(self, detail: str, step: str = "", code: str = "") -> None:
        super().__init__(detail)
        self.step = step
        self.code = code  # S3's error code


class NotApplicable(Exception):
    """Nothing to check, or nothing that can be read through the S3 API."""


@dataclass(frozen=True)
class Row:
    name: str
    ok: bool | None  # None: not applicable, unknown or a note
    detail: str
    required: bool = True

    @property
    def mark(self) -> str:
        return MARKS[self.ok]


def exit_status(rows: Sequence[Row]) -> int:
    return 1 if any(row.ok is False and row.required for row in rows) else 0


def format_table(rows: Sequence[Row]) -> str:
    width = max(len(row.name) for row in rows) + len(" (optional)")
    lines = [f"   {'capability':<{width}}  detail"]
    for row in rows:
        name = row.name if row.required else f"{row.name} (optional)"
        lines.append(f"{row.mark}  {name:<{width}}  {row.detail}")
    missing = [row.name for row in rows if row.ok is False and row.required]
    lines.append(f"\n{len(missing)} required capability(ies) missing: {', '.join(missing)}" if missing
                 else "\nall required capabilities present")
    return "\n".join(lines)


# -- the probes' toolbox ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def code(self) -> str:
        match = re.search(rb"<Code>([^<]+)</Code>", self.body)
        return match.group(1).decode() if match else ""

    def __str__(self) -> str:
        return f"{self.status} {self.code}".strip()


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ (0x82F63B78 if n & 1 else 0)
        table.append(n)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """Castagnoli CRC (x-amz-checksum-crc32c); bit by bit is plenty for the probes' few KiB."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def part_checksum(algorithm: PartChecksum, body: bytes) -> str:
    """The base64 value of the part's checksum header (CHECKSUM_HEADERS)."""
    if algorithm is PartChecksum.CRC32C:
        return _b64(crc32c(body).to_bytes(4, "big"))
    return _b64(hashlib.new(algorithm.value, body).digest())


_S3_ALGORITHM = {PartChecksum.CRC32C: "CRC32C", PartChecksum.SHA256: "SHA256"}


@dataclass
class Check:
    settings: Settings
    client: Any  # aiobotocore S3 client
    http: aiohttp.ClientSession
    signer: S3PartSigner
    prefix: str  # of this run's keys, ends with "/"
    uploads: dict[str, str] = field(default_factory=dict)  # upload id -> key, until completed or aborted
    objects: set[str] = field(default_factory=set)
    server: str = ""  # the Server header S3 answers with

    @property
    def bucket(self) -> str:
        return self.settings.s3_bucket

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def call(self, operation: str, **kwargs: Any) -> Any:
        """One aiobotocore call on the bucket; a refusal is `Failed` in step `operation`."""
        try:
            response = await getattr(self.client, _snake(operation))(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code, message = error_code(exc), exc.response.get("Error", {}).get("Message", "")
            raise Failed(f"{code}: {message}" if code and message else code or str(exc), operation, code) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise Failed(repr(exc), operation) from exc
        self.server = self.server or response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("server", "")
        return response

    async def send(self, method: str, url: str, headers: Mapping[str, str] | None = None, body: bytes = b"",
                   step: str = "") -> Reply:
        """A presigned request, as a client sends it (aiohttp sets Content-Length from the body)."""
        try:
            async with self.http.request(method, URL(url, encoded=True), headers=headers, data=body) as response:
                return Reply(response.status, response.headers, await response.read())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Failed(repr(exc), step or method) from exc

    async def create(self, key: str, algorithm: PartChecksum | None = None) -> str:
        extra = {"ChecksumAlgorithm": _S3_ALGORITHM[algorithm]} if algorithm in _S3_ALGORITHM else {}
        response = await self.call("CreateMultipartUpload", Key=key, **extra)
        upload_id = str(response["UploadId"])
        self.uploads[upload_id] = key
        return upload_id

    async def put_part(self, key: str, upload_id: str, body: bytes, *, signed_size: int | None = None,
                       checksum: tuple[str, str] | None = None) -> Reply:
        """PUT a part to the URL the gateway would sign (Content-Length pinned to `signed_size`)."""
        [part] = self.signer.sign_parts(key, upload_id, [
            PartToSign(1, len(body) if signed_size is None else signed_size, checksum)], expires_in=URL_TTL)
        return await self.send("PUT", part.url, part.headers, body, "UploadPart")

    async def upload_part(self, key: str, upload_id: str, body: bytes,
                          checksum: tuple[str, str] | None = None) -> str:
        reply = await self.put_part(key, upload_id, body, checksum=checksum)
        if reply.status != 200 or not reply.headers.get("ETag"):
            raise Failed(f"presigned PUT answered {reply}", "UploadPart")
        self.server = self.server or reply.headers.get("Server", "")
        return reply.headers["ETag"]

    async def complete(self, key: str, upload_id: str, part: Mapping[str, Any]) -> None:
        await self.call("CompleteMultipartUpload", Key=key, UploadId=upload_id,
                        MultipartUpload={"Parts": [{"PartNumber": 1, **part}]})
        self.uploads.pop(upload_id, None)
        self.objects.add(key)

    async def put_object(self, key: str, body: bytes) -> None:
        self.objects.add(key)
        await self.call("PutObject", Key=key, Body=body)

    async def read(self, key: str) -> bytes:
        response = await self.call("GetObject", Key=key)
        async with response["Body"] as stream:
            return bytes(await stream.read())

    async def cleanup(self) -> Row:
        """Abort what is left, then delete every object; a multipart listing catches lost answers."""
        leftovers: list[str] = []
        with contextlib.suppress(Failed):
            listing = await self.call("ListMultipartUploads", Prefix=self.prefix)
            self.uploads.update({str(u["UploadId"]): str(u["Key"]) for u in listing.get("Uploads", [])})
        aborted = len(self.uploads)
        for upload_id, key in self.uploads.items():
            try:
                await self.call("AbortMultipartUpload", Key=key, UploadId=upload_id)
            except Failed as exc:
                if exc.code not in NO_SUCH_UPLOAD:
                    leftovers.append(f"upload {key} ({exc})")
        for key in sorted(self.objects):
            try:
                await self.call("DeleteObject", Key=key)
            except Failed as exc:
                leftovers.append(f"{key} ({exc})")
        if leftovers:
            return Row("DeleteObject (cleanup)", False, f"left behind: {'; '.join(leftovers)}; delete by hand")
        return Row("DeleteObject (cleanup)", True,
                   f"deleted {len(self.objects)} objects, aborted {aborted} uploads under {self.prefix}")


# -- probes ----------------------------------------------------------------------------------------------


def _body(tag: str) -> bytes:
    return (tag.encode() + b":" + secrets.token_bytes(BODY_SIZE))[:BODY_SIZE]


async def probe_bucket(c: Check) -> str:
    # What /readyz and the sweeper call; the least-privilege policy allows it (HeadBucket needs ListBucket).
    await c.call("ListMultipartUploads", Prefix=c.prefix, MaxUploads=1)
    return f"{c.bucket} at {c.settings.s3_endpoint}" + (f" (Server: {c.server})" if c.server else "")


async def probe_create(c: Check) -> str:
    await c.create(c.key("create"))
    return "upload id issued"


async def probe_upload_part(c: Check) -> str:
    key = c.key("part")
    etag = await c.upload_part(key, await c.create(key), _body("part"))
    return f"presigned PUT, Content-Length signed: 200, ETag {etag}"


async def probe_signed_length(c: Check) -> str:
    key = c.key("length")
    body = _body("length")
    reply = await c.put_part(key, await c.create(key), body[:-1], signed_size=len(body))
    if reply.status < 400:
        raise Failed(f"a PUT of {len(body) - 1} bytes to a URL signed for {len(body)} was accepted ({reply})")
    return f"a PUT of {len(body) - 1} bytes to a URL signed for {len(body)} is refused ({reply})"


async def probe_list_parts(c: Check) -> str:
    key = c.key("list")
    body = _body("list")
    upload_id = await c.create(key)
    etag = await c.upload_part(key, upload_id, body)
    parts = (await c.call("ListParts", Key=key, UploadId=upload_id)).get("Parts", [])
    listed = [(p.get("PartNumber"), p.get("Size"), p.get("ETag")) for p in parts]
    if listed != [(1, len(body), etag)]:
        raise Failed(f"expected part 1 of {len(body)} bytes with ETag {etag}, S3 lists {listed}")
    return f"part 1 listed: {len(body)} bytes, same ETag"


async def probe_complete(c: Check) -> str:
    key = c.key("complete")
    body = _body("complete")
    upload_id = await c.create(key)
    await c.complete(key, upload_id, {"ETag": await c.upload_part(key, upload_id, body)})
    if await c.read(key) != body:
        raise Failed("the completed object's bytes differ from the part's")
    return f"object of {len(body)} bytes reads back identical"


async def probe_abort(c: Check) -> str:
    key = c.key("abort")
    upload_id = await c.create(key)
    await c.upload_part(key, upload_id, _body("abort"))
    await c.call("AbortMultipartUpload", Key=key, UploadId=upload_id)
    c.uploads.pop(upload_id)
    try:
        await c.call("ListParts", Key=key, UploadId=upload_id)
    except Failed as exc:
        if exc.code in NO_SUCH_UPLOAD:
            return f"ListParts afterwards: {exc.code}"
        raise Failed(f"ListParts after the abort: {exc} (the gateway expects NoSuchUpload)") from exc
    raise Failed("ListParts still answers after the abort (the gateway expects NoSuchUpload)")


async def probe_copy(c: Check) -> str:
    source, key = c.key("copy-source"), c.key("copy")
    body = _body("copy") * 2
    await c.put_object(source, body)
    upload_id = await c.create(key)
    copied = await c.call("UploadPartCopy", Key=key, UploadId=upload_id, PartNumber=1,
                          CopySource={"Bucket": c.bucket, "Key": source}, CopySourceRange="bytes=100-1099")
    await c.complete(key, upload_id, {"ETag": copied["CopyPartResult"]["ETag"]})
    if await c.read(key) != body[100:1100]:
        raise Failed("the copied part's bytes differ from the source range")
    return "bytes 100-1099 of an object copied into a part, read back identical"


async def probe_delete_objects(c: Check) -> str:
    keys = [c.key("delete-1"), c.key("delete-2")]
    for key in keys:
        await c.put_object(key, b"delete me")
    response = await c.call("DeleteObjects", Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    if response.get("Errors"):
        raise Failed(f"per-key errors: {response['Errors']}")
    for key in keys:
        try:
            await c.call("HeadObject", Key=key)
        except Failed:
            continue
        raise Failed(f"{key} still exists after DeleteObjects")
    return f"{len(keys)} objects deleted in one request"


async def probe_presigned_get(c: Check) -> str:
    key = c.key("download")
    body = _body("download")
    await c.put_object(key, body)
    disposition = content_disposition("gateway check.txt")
    url = c.signer.sign_download(key, filename="gateway check.txt", content_type="text/plain", expires_in=URL_TTL)
    reply = await c.send("GET", url, step="presigned GET")
    if reply.status != 200 or reply.body != body:
        raise Failed(f"answered {reply} with {len(reply.body)} bytes")
    served = (reply.headers.get("Content-Disposition"), reply.headers.get("Content-Type"))
    if served != (disposition, "text/plain"):
        raise Failed(f"response-content-disposition/-type ignored (served {served}): browsers may render "
                     "downloads inline instead of saving them")
    return "200, bytes identical, Content-Disposition and Content-Type as signed"


async def probe_checksum(algorithm: PartChecksum, c: Check) -> str:
    """The part checksum a client may ask for (Upload-Part-Checksum): a right one passes, a wrong one not."""
    key = c.key(f"checksum-{algorithm.value}")
    body = _body(algorithm.value)
    header = CHECKSUM_HEADERS[algorithm]
    upload_id = await c.create(key, algorithm)
    wrong = await c.put_part(key, upload_id, body, checksum=(header, part_checksum(algorithm, body + b"!")))
    if wrong.status < 400:
        raise Failed(f"a part with a wrong {header} was accepted ({wrong})")
    value = part_checksum(algorithm, body)
    etag = await c.upload_part(key, upload_id, body, checksum=(header, value))
    field_name = f"Checksum{_S3_ALGORITHM[algorithm]}" if algorithm in _S3_ALGORITHM else ""
    await c.complete(key, upload_id, {"ETag": etag, **({field_name: value} if field_name else {})})
    return f"{header}: right one 200, wrong one {wrong}; completes"


def judge_cors(rules: Sequence[Mapping[str, Any]], origins: Sequence[str]) -> str:
    """✔ detail if some rule lets browsers PUT parts from every configured origin, else `Failed`."""
    wanted = cors_rule(origins)
    for rule in rules:
        if dict(rule) == wanted:
            return f"rule {wanted['ID']} as gateway s3 setup writes it"

    def allows(rule: Mapping[str, Any]) -> bool:
        allowed_headers = [h.lower() for h in rule.get("AllowedHeaders", [])]
        return ("PUT" in rule.get("AllowedMethods", [])
                and all(any(fnmatch.fnmatchcase(o, p) for p in rule.get("AllowedOrigins", []))
                        for o in wanted["AllowedOrigins"])
                and all(any(fnmatch.fnmatchcase(h, p) for p in allowed_headers) for h in CORS_ALLOWED_HEADERS)
                and "etag" in [h.lower() for h in rule.get("ExposeHeaders", [])])

    for rule in rules:
        if allows(rule):
            return f"rule {rule.get('ID', '(no id)')} allows PUT from {', '.join(wanted['AllowedOrigins'])}"
    raise Failed(f"no rule allows PUT from {', '.join(wanted['AllowedOrigins'])} with "
                 f"{', '.join(CORS_ALLOWED_HEADERS)} and exposes ETag ({len(rules) or 'no'} CORS rule(s))")


def _action(rule: Mapping[str, Any]) -> tuple[str, str, int] | None:
    """(action, prefix, days) of an enabled rule that applies to a whole prefix, else None."""
    if rule.get("Status") != "Enabled":
        return None
    scope = rule.get("Filter", {"Prefix": rule.get("Prefix", "")})
    if set(scope) - {"Prefix"}:
        return None  # tags or sizes: not every object
    prefix = str(scope.get("Prefix", ""))
    if "AbortIncompleteMultipartUpload" in rule:
        return "abort", prefix, int(rule["AbortIncompleteMultipartUpload"].get("DaysAfterInitiation", 0))
    if "Days" in rule.get("Expiration", {}):
        return "expire", prefix, int(rule["Expiration"]["Days"])
    return None


def _describe(action: tuple[str, str, int]) -> str:
    kind, prefix, days = action
    return f"{'abort uploads' if kind == 'abort' else 'expire objects'} under '{prefix}' after {days} days"


def judge_lifecycle(rules: Sequence[Mapping[str, Any]], settings: Settings) -> str:
    """✔ if the rules `gateway s3 setup` writes are there (whatever their IDs), else `Failed`."""
    present = [a for a in map(_action, rules) if a]
    wanted = [a for a in map(_action, lifecycle_rules(settings)) if a]
    missing = [a for a in wanted if a not in present]
    if missing:
        raise Failed(f"missing: {'; '.join(map(_describe, missing))}"
                     + (f" (the bucket has: {'; '.join(map(_describe, present))})" if present else ""))
    return "; ".join(map(_describe, wanted))


def judge_expiry(rules: Sequence[Mapping[str, Any]], settings: Settings) -> str:
    """Nothing may remove a live upload's data before GATEWAY_UPLOAD_MAX_AGE: no abort rule over the
    upload prefix and no expiration over the stash that is shorter."""
    watched = {"abort": upload_prefix(settings), "expire": stash_prefix(settings)}
    found = []
    for rule in rules:
        action = _action(rule)
        if action and action[0] in watched and (action[1].startswith(watched[action[0]])
                                                or watched[action[0]].startswith(action[1])):
            found.append((action[2], str(rule.get("ID", "(no id)")), action))
    if not found:
        raise NotApplicable(f"no rule aborts uploads under '{upload_prefix(settings)}': only the gateway's sweeper "
                            "does (orphans after GATEWAY_ORPHAN_GRACE)")
    days, rule_id, action = min(found)
    max_age = settings.upload_max_age / DAY
    if days * DAY < settings.upload_max_age:
        raise Failed(f"rule {rule_id} would {_describe(action)}, before GATEWAY_UPLOAD_MAX_AGE ({max_age:g} days): "
                     f"uploads still in progress would lose their data; lengthen it ({SETUP} writes "
                     f"{lifecycle_days(settings)} days) or lower GATEWAY_UPLOAD_MAX_AGE")
    return f"shortest: rule {rule_id}, {days} days ≥ GATEWAY_UPLOAD_MAX_AGE ({max_age:g} days)"


async def _bucket_rules(c: Check, operation: str, missing: str, field_name: str) -> list[dict[str, Any]]:
    try:
        return list((await c.call(operation)).get(field_name) or [])
    except Failed as exc:
        if exc.code == missing:
            return []
        if exc.code == "AccessDenied":  # the gateway's own policy need not read bucket configuration
            raise NotApplicable(f"unknown: {operation} denied to these credentials "
                                "(deploy/iam-policy-setup.json allows it)") from exc
        raise


async def probe_cors(c: Check) -> str:
    return judge_cors(await _bucket_rules(c, "GetBucketCors", "NoSuchCORSConfiguration", "CORSRules"),
                      c.settings.cors_origins)


def _lifecycle(c: Check) -> Awaitable[list[dict[str, Any]]]:
    return _bucket_rules(c, "GetBucketLifecycleConfiguration", "NoSuchLifecycleConfiguration", "Rules")


async def probe_lifecycle(c: Check) -> str:
    return judge_lifecycle(await _lifecycle(c), c.settings)


async def probe_expiry(c: Check) -> str:
    try:
        rules = await _lifecycle(c)
    except Failed as exc:
        raise NotApplicable(f"lifecycle not readable: {exc}") from exc
    return judge_expiry(rules, c.settings)


async def probe_server_defaults(c: Check) -> str:
    """Server-wide expiry of incomplete uploads is configured outside the S3 API, so it is only a note."""
    setting = f"MINIO_API_STALE_UPLOADS_EXPIRY={lifecycle_days(c.settings) * 24}h"
    if "minio" in c.server.lower():
        raise NotApplicable(f"MinIO aborts incomplete uploads after api stale_uploads_expiry (default 24 h), not "
                            f"readable via S3: keep it above GATEWAY_UPLOAD_MAX_AGE, e.g. {setting}")
    raise NotApplicable(f"not readable via S3; e.g. MinIO aborts incomplete uploads after 24 h unless {setting}")


async def probe_object_setting(setting: str, reported: str, absent: str, c: Check) -> str:
    """Create an object with the gateway's object headers; HeadObject must report the setting (`absent`: what
    S3 means when it reports nothing, as AWS does for STANDARD)."""
    wanted = getattr(c.settings, setting)
    if not wanted:
        raise NotApplicable(f"GATEWAY_{setting.upper()} unset")
    key = c.key(setting)
    headers = object_headers(c.settings)
    c.objects.add(key)
    url = c.signer.parts.presign_url("PUT", c.bucket, key, signed_headers=headers, expires_in=URL_TTL)
    reply = await c.send("PUT", url, headers, b"object settings", "PutObject")
    if reply.status != 200:
        raise Failed(f"PutObject with {', '.join(headers)} answered {reply}")
    got = (await c.call("HeadObject", Key=key)).get(reported) or absent
    if got != wanted:
        raise Failed(f"{wanted} sent, HeadObject reports {reported} {got or 'missing'}")
    return f"HeadObject reports {reported} {got}"


@dataclass(frozen=True)
class Probe:
    name: str
    run: Callable[[Check], Awaitable[str]]
    advice: str  # what to configure, or what the gateway does instead, when it fails
    required: bool = True


_CHECKSUM_ADVICE = ("clients must not ask for Upload-Part-Checksum: {} on this server (parts would be refused or "
                    "go unverified); tus Upload-Checksum on the proxy path is verified by the gateway itself")

PROBES: tuple[Probe, ...] = (
    Probe("bucket", probe_bucket, "check GATEWAY_S3_ENDPOINT_URL, GATEWAY_S3_BUCKET and the credentials"),
    Probe("CreateMultipartUpload", probe_create, "every upload is one multipart upload (s3:PutObject on the prefix)"),
    Probe("UploadPart", probe_upload_part, "clients PUT parts to presigned URLs: check the signature region "
                                           "(GATEWAY_S3_REGION) and GATEWAY_S3_ADDRESSING_STYLE"),
    Probe("signed Content-Length", probe_signed_length,
          "the server ignores signed headers: a wrong-sized part is only caught at confirm (409 size_mismatch) "
          "and signed part checksums are not binding"),
    Probe("ListParts", probe_list_parts, "the gateway confirms every part with ListParts"),
    Probe("CompleteMultipartUpload", probe_complete, "uploads cannot finish"),
    Probe("AbortMultipartUpload", probe_abort, "termination, expiry and the orphan sweep abort uploads"),
    Probe("UploadPartCopy", probe_copy, "tus concatenation (Upload-Concat: final) copies ranges with it"),
    Probe("DeleteObjects", probe_delete_objects, "the gateway falls back to one DeleteObject per key",
          required=False),
    Probe("presigned GET", probe_presigned_get, "downloads (GET /files/{id}) redirect to presigned GETs"),
    *(Probe(f"part checksum {a.value}", partial(probe_checksum, a), _CHECKSUM_ADVICE.format(a.value))
      for a in PartChecksum),
    Probe("bucket CORS", probe_cors, f"browsers cannot PUT parts: {SETUP}"),
    Probe("lifecycle rules", probe_lifecycle, f"S3 itself never drops stale uploads or stash segments: {SETUP}"),
    Probe("multipart expiry", probe_expiry, ""),
    Probe("server defaults", probe_server_defaults, "", required=False),
    Probe("SSE", partial(probe_object_setting, "s3_sse", "ServerSideEncryption", ""),
          "the server does not apply GATEWAY_S3_SSE: unset it or enable encryption on the server"),
    Probe("storage class", partial(probe_object_setting, "s3_storage_class", "StorageClass", "STANDARD"),
          "the server does not apply GATEWAY_S3_STORAGE_CLASS: unset it or pick a class it supports"),
)


async def _row(probe: Probe, c: Check, failed: set[str]) -> Row:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            return Row(probe.name, True, await probe.run(c), probe.required)
    except NotApplicable as exc:
        return Row(probe.name, None, str(exc), probe.required)
    except Failed as exc:
        if exc.step in failed and exc.step != probe.name:
            return Row(probe.name, None, f"not tested: {exc.step} failed", probe.required)
        detail = f"{exc.step}: {exc}" if exc.step and exc.step != probe.name else str(exc)
        return Row(probe.name, False, f"{detail} → {probe.advice}" if probe.advice else detail, probe.required)
    except TimeoutError:
        return Row(probe.name, False, f"no answer within {PROBE_TIMEOUT:g} s → {probe.advice}", probe.required)
    except Exception as exc:  # an answer of an unexpected shape: a finding too, and the other probes still run
        return Row(probe.name, False, f"unexpected {exc!r}", probe.required)


@contextlib.asynccontextmanager
async def _check(settings: Settings) -> AsyncIterator[Check]:
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
                s3_adapters(settings, http) as adapters):
        signer = make_signer(settings, settings.s3_endpoint, adapters.credentials)
        prefix = f"{upload_prefix(settings)}_check/{secrets.token_hex(8)}/"
        yield Check(settings, adapters.store.client, http,
                    S3PartSigner(signer, signer, settings.s3_bucket, adapters.credentials), prefix)


async def run_check(settings: Settings, probes: Sequence[Probe] = PROBES) -> list[Row]:
    """Every probe in order, then the cleanup row; only the first row if the bucket is unreachable."""
    if not settings.s3_bucket:
        raise CheckError("GATEWAY_S3_BUCKET is required")
    rows: list[Row] = []
    try:
        async with _check(settings) as c:
            try:
                for probe in probes:
                    rows.append(await _row(probe, c, {r.name for r in rows if r.ok is False}))
                    if rows[0].ok is False:
                        return rows
            finally:
                if rows and rows[0].ok is not False:
                    rows.append(await c.cleanup())
    except LookupError as exc:  # no credentials in the AWS chain
        raise CheckError(str(exc)) from exc
    return rows
