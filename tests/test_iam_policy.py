"""The least-privilege IAM policy of deploy/iam-policy.json is enough for every S3 call the gateway makes
(and removing an action shows: the negative controls); object settings (encryption, storage class,
type, name) reach S3.

moto in server mode with IAM enforcement (`POST /moto-api/reset-auth` with `0`) checks the access key,
the header SigV4 signature and the IAM policy's actions and resource ARNs, so the gateway runs in-process
against it with the keys of an IAM user that has exactly the policy (placeholders filled in). It does
not check presigned URLs (with enforcement on it answers them 500, with it off it accepts any
signature), Condition blocks, or KMS permissions, and it deviates from AWS in a few mappings (named
where the tests meet them): a presigned PUT is made with enforcement switched off for that one request.

Postgres is a database of its own in the embedded server (the sweeper then sees only these uploads);
the moto bucket is of this module only. moto keeps its state per process, so enforcement is switched
off again whatever happens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import asyncpg
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from gateway.app import BACKGROUND
from gateway.config import Settings, env_name, load_settings
from gateway.db.migrate import migrate
from gateway.embedded import StackInfo
from gateway.s3.setup import ABORT_RULE_ID, CORS_RULE_ID, STASH_RULE_ID, SetupError, apply_bucket_setup
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.direct import confirm, put_part, sign_ok
from tests.support.gateway import Gateway, make_settings, running, upload_id
from tests.support.moto import running_moto
from tests.support.tokens import auth

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_POLICY = ROOT / "deploy" / "iam-policy.json"
SETUP_POLICY = ROOT / "deploy" / "iam-policy-setup.json"

BUCKET = f"iam-gateway-{uuid.uuid4().hex[:8]}"
PREFIX = "uploads"
REGION = "us-east-1"
PART = 5 * MiB
ROOT_KEY = "testing"  # moto's default account; rejected once enforcement is on
OCTETS = {"Content-Type": "application/offset+octet-stream"}
# A client's filename: a path, a control character and non-ASCII letters.
FILENAME = "../../etc/r\u00e9 sum\u00e9\x07.pdf"
METADATA = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}"
                    for k, v in {"filename": FILENAME, "filetype": "application/pdf"}.items())
# What reaches S3: the name without its path and control character, an ASCII fallback and RFC 5987.
DISPOSITION = "attachment; filename=\"r_ sum_.pdf\"; filename*=UTF-8''r%C3%A9%20sum%C3%A9.pdf"

CONFIG = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                request_checksum_calculation="when_required", response_checksum_validation="when_required")


# -- moto ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moto:
    endpoint: str
    kms_key_arn: str

    def client(self, service: str, access_key: str = ROOT_KEY, secret: str = ROOT_KEY) -> Any:
        return botocore.session.get_session().create_client(
            service, endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=access_key,
            aws_secret_access_key=secret, config=CONFIG)

    def enforce(self, on: bool) -> None:
        """IAM enforcement from the next request on (0 requests without auth), or off (infinitely many)."""
        # Not form-encoded (urllib's default type): Flask would consume the body as a form.
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf",
                                         method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    @contextlib.contextmanager
    def enforced(self) -> Iterator[None]:
        self.enforce(True)
        try:
            yield
        finally:
            self.enforce(False)


def run_sync(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """A coroutine run to its end on a loop of its own, outside whatever loop pytest-asyncio keeps."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make()).result()


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    with running_moto() as endpoint:
        try:
            Moto(endpoint, "").enforce(False)
            admin = Moto(endpoint, "")
            admin.client("s3").create_bucket(Bucket=BUCKET)
            key_arn = admin.client("kms").create_key(Description="tus gateway SSE-KMS")["KeyMetadata"]["Arn"]
            yield Moto(endpoint, key_arn)
        finally:
            with contextlib.suppress(OSError):
                Moto(endpoint, "").enforce(False)


@pytest.fixture(scope="module")
def database(stack: StackInfo) -> Iterator[str]:
    """A fresh, migrated database: the sweeper expires and lists only what these tests create."""
    name = f"iam_{uuid.uuid4().hex[:8]}"

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(stack.database_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    run_sync(lambda: sql(f'create database "{name}"'))
    url = stack.database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        run_sync(lambda: migrate(url))
        yield url
    finally:
        run_sync(lambda: sql(f'drop database "{name}" with (force)'))


# -- policies ---------------------------------------------------------------------------------------------


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def filled(path: Path, kms_key_arn: str = "", *, without: Iterable[str] = ()) -> dict[str, Any]:
    """A policy file with its placeholders filled in (in Resource only), minus some actions."""
    document: dict[str, Any] = json.loads(path.read_text())
    dropped = set(without)
    statements = []
    for statement in document["Statement"]:
        resources = statement["Resource"]
        resources = [resources] if isinstance(resources, str) else resources
        statement["Resource"] = [r.replace("BUCKET", BUCKET).replace("PREFIX", PREFIX).replace("KEY_ARN", kms_key_arn)
                                 for r in resources]
        statement["Action"] = [a for a in _actions(statement) if a not in dropped]
        if statement["Action"]:
            statements.append(statement)
    document["Statement"] = statements
    return document


def policy_user(moto: Moto, document: dict[str, Any]) -> tuple[str, str]:
    """An IAM user with just this inline policy, and its access key (made while enforcement is off)."""
    iam = moto.client("iam")
    name = f"tus-gateway-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="tus-gateway", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


# What the tests look at S3 with while enforcement is on (moto's root keys are refused then): read and
# list only, so whether the gateway's own calls are allowed depends on the runtime policy alone.
INSPECTOR = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListMultipartUploadParts"],
     "Resource": f"arn:aws:s3:::{BUCKET}/*"},
    {"Effect": "Allow", "Action": "s3:ListBucketMultipartUploads", "Resource": f"arn:aws:s3:::{BUCKET}"},
]}


def test_runtime_policy_lists_exactly_the_actions_of_the_gateway() -> None:
    document = json.loads(RUNTIME_POLICY.read_text())
    by_sid = {s["Sid"]: s for s in document["Statement"]}
    assert all(s["Effect"] == "Allow" for s in by_sid.values())
    objects, listing, kms = (by_sid[sid] for sid in ("TusGatewayObjects", "TusGatewayListMultipartUploads",
                                                      "TusGatewaySseKms"))
    assert sorted(_actions(objects)) == ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject",
                                         "s3:ListMultipartUploadParts", "s3:PutObject"]
    assert objects["Resource"] == "arn:aws:s3:::BUCKET/PREFIX/*"
    # The only bucket-level action; no s3:ListBucket (/readyz uses ListMultipartUploads too).
    assert _actions(listing) == ["s3:ListBucketMultipartUploads"] and listing["Resource"] == "arn:aws:s3:::BUCKET"
    assert sorted(_actions(kms)) == ["kms:Decrypt", "kms:GenerateDataKey"] and kms["Resource"] == "KEY_ARN"
    assert len(by_sid) == 3
    setup = json.loads(SETUP_POLICY.read_text())
    setup_actions = {a for s in setup["Statement"] for a in _actions(s)}
    assert setup_actions == {"s3:ListBucket", "s3:GetBucketCORS", "s3:PutBucketCORS", "s3:GetLifecycleConfiguration",
                             "s3:PutLifecycleConfiguration", "s3:CreateBucket"}
    assert not setup_actions & {a for s in document["Statement"] for a in _actions(s)}


# -- the gateway ------------------------------------------------------------------------------------------


def gateway_settings(stack: StackInfo, moto: Moto, database: str, keys: tuple[str, str], prefix: str = PREFIX,
                     **env: str) -> Settings:
    """Settings as a deployment gives them: S3 from GATEWAY_* variables, the rest as the tests' gateways."""
    environ = {
        "GATEWAY_S3_ENDPOINT_URL": moto.endpoint, "GATEWAY_S3_BUCKET": BUCKET, "GATEWAY_S3_REGION": REGION,
        "GATEWAY_S3_ACCESS_KEY_ID": keys[0], "GATEWAY_S3_SECRET_ACCESS_KEY": keys[1],
        "GATEWAY_S3_KEY_PREFIX": prefix, "GATEWAY_S3_ADDRESSING_STYLE": "path", "GATEWAY_PART_SIZE": "5MiB",
        # Only the startup pass of the background jobs runs; the tests run the sweeper themselves.
        "GATEWAY_SWEEP_INTERVAL": "1h", "GATEWAY_COMPLETION_RETRY_AFTER": "2h",
        # moto dates every multipart upload 2010-11-10 (ListMultipartUploads' Initiated), so with a real
        # grace the startup pass would abort an upload created between its CreateMultipartUpload and INSERT.
        "GATEWAY_ORPHAN_GRACE": "7300d",
        **{f"GATEWAY_{k.upper()}": v for k, v in env.items()},
    }
    base = make_settings(stack, database_url=database)
    rest = {f.name: getattr(base, f.name) for f in fields(Settings) if env_name(f.name) not in environ}
    return load_settings(environ, **rest)


async def patch(gw: Gateway, location: str, offset: int, data: bytes, **headers: str) -> dict[str, str]:
    async with gw.http.patch(location, data=data, headers={**auth(), **OCTETS, "Upload-Offset": str(offset),
                                                           **headers}) as response:
        text = await response.text()
        assert response.status == 204, (response.status, text)
        return dict(response.headers)


async def head(gw: Gateway, location: str) -> dict[str, str]:
    async with gw.http.head(location, headers=auth()) as response:
        assert response.status == 200
        return dict(response.headers)


async def delete(gw: Gateway, location: str) -> None:
    async with gw.http.delete(location, headers=auth()) as response:
        assert response.status == 204, await response.text()


async def row_of(database: str, location: str) -> asyncpg.Record:
    row = await upload_row(database, upload_id(location))
    assert row is not None
    return row


async def stored(database: str, s3: Any, location: str) -> bytes:
    """The bytes of a completed upload's object, read with `s3` (the inspector's client)."""
    row = await row_of(database, location)
    assert row["state"] == "completed", row["state"]
    response = await asyncio.to_thread(s3.get_object, Bucket=BUCKET, Key=row["s3_key"])
    return bytes(response["Body"].read())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def error_code(caught: pytest.ExceptionInfo[ClientError]) -> str:
    return str(caught.value.response["Error"]["Code"])


def gateway_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the gateway logged at WARNING and above, and anything at ERROR from anywhere."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR or (r.levelno >= logging.WARNING and r.name.startswith("gateway"))]


# moto authorizes DeleteObjects (POST /bucket?delete) as s3:DeleteObject on the *bucket* ARN
# (moto/s3/responses.py _bucket_response_post) and then answers every key AccessDenied; AWS checks
# s3:DeleteObject on each object's ARN, which the policy grants. What that deviation makes the gateway log:
MOTO_MULTI_DELETE = ("S3 DeleteObjects failed: 200", "could not delete superseded stash objects of ")


async def test_gateway_runs_on_the_least_privilege_policy(stack: StackInfo, moto: Moto, database: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    keys = policy_user(moto, filled(RUNTIME_POLICY, moto.kms_key_arn))
    user = moto.client("s3", *keys)
    inspector = moto.client("s3", *policy_user(moto, INSPECTOR))
    with moto.enforced():
        # Enforcement is real: moto's root keys are unknown now, and the user is held to the prefix.
        with pytest.raises(ClientError) as caught:
            moto.client("s3").put_object(Bucket=BUCKET, Key=f"{PREFIX}/root", Body=b"x")
        assert error_code(caught) == "InvalidAccessKeyId"
        for key in ("elsewhere/x", f"{PREFIX}x/y", PREFIX):
            with pytest.raises(ClientError) as caught:
                user.put_object(Bucket=BUCKET, Key=key, Body=b"x")
            assert error_code(caught) == "AccessDenied", key
        with pytest.raises(ClientError) as caught:
            user.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")  # no s3:ListBucket
        assert error_code(caught) == "AccessDenied"
        with pytest.raises(ClientError) as caught:
            user.delete_object(Bucket=BUCKET, Key="elsewhere/x")
        assert error_code(caught) == "AccessDenied"

        async with running(gateway_settings(stack, moto, database, keys)) as gw:
            status, body = await readiness(gw)  # ListMultipartUploads, MaxUploads=1
            assert status == 200, body

            # tus creation (CreateMultipartUpload), PATCHes into 5 MiB parts (UploadPart), HEAD, and
            # completion (CompleteMultipartUpload) at the last byte.
            big = os.urandom(11 * MiB)
            location = await gw.create(len(big), **{"Upload-Metadata": METADATA})
            assert (await patch(gw, location, 0, big[:2 * PART]))["Upload-Offset"] == str(2 * PART)
            assert (await head(gw, location))["Upload-Offset"] == str(2 * PART)
            await patch(gw, location, 2 * PART, big[2 * PART:])
            assert (await head(gw, location))["Upload-Offset"] == str(len(big))
            assert sha256(await stored(database, inspector, location)) == sha256(big)
            final = inspector.head_object(Bucket=BUCKET, Key=(await row_of(database, location))["s3_key"])
            assert final["ContentLength"] == len(big) and final["ContentType"] == "application/pdf"

            # creation-with-upload: the POST's body is the whole (one-part) upload.
            small = os.urandom(100_000)
            async with gw.http.post(gw.files(), data=small, headers={
                    **auth(), **OCTETS, "Upload-Length": str(len(small))}) as response:
                assert response.status == 201, await response.text()
                with_upload = response.headers["Location"]
                assert response.headers["Upload-Offset"] == str(len(small))
            assert await stored(database, inspector, with_upload) == small

            # A zero-length upload is an empty PutObject.
            empty = await gw.create(0)
            assert await stored(database, inspector, empty) == b""

            # Deferred length: 1 MiB lands in a stash segment (PutObject under {prefix}/stash/), the PATCH
            # that declares the length reads it back (GetObject) into the final part.
            deferred = os.urandom(MiB + 300_000)
            later = await gw.create(None)
            await patch(gw, later, 0, deferred[:MiB])
            stash_key = await _stash_key(database, later)
            assert stash_key.startswith(f"{PREFIX}/stash/")
            inspector.head_object(Bucket=BUCKET, Key=stash_key)
            await patch(gw, later, MiB, deferred[MiB:], **{"Upload-Length": str(len(deferred))})
            assert await stored(database, inspector, later) == deferred
            # The superseded segment's DeleteObjects is refused by moto (MOTO_MULTI_DELETE), not by the
            # policy: the same user deletes the same key with DeleteObject.
            multi = user.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": stash_key}], "Quiet": True})
            assert [e["Code"] for e in multi.get("Errors", [])] == ["AccessDenied"]
            user.delete_object(Bucket=BUCKET, Key=stash_key)

            # The direct path's confirm lists parts (ListParts). moto cannot take the presigned PUT with
            # enforcement on (it answers 500), so that one request goes while it is off.
            direct = os.urandom(200_000)
            direct_location = await gw.create(len(direct))
            signed = await sign_ok(gw, direct_location, [1])
            moto.enforce(False)
            try:
                assert await put_part(gw, signed[1], direct) == 200
            finally:
                moto.enforce(True)
            assert (await confirm(gw, direct_location, 1))[0] == 204
            assert await stored(database, inspector, direct_location) == direct

            # Concatenation: a 5 MiB partial is copied inside S3 (UploadPartCopy), a small one streamed
            # through the gateway (GetObject with a range, UploadPart). moto does not check the copy
            # source's s3:GetObject, which AWS does (granted: the partials are under the prefix).
            pieces = [os.urandom(PART), os.urandom(1024)]
            partials = []
            for piece in pieces:
                partial = await gw.create(len(piece), **{"Upload-Concat": "partial"})
                await patch(gw, partial, 0, piece)
                partials.append(partial)
            async with gw.http.post(gw.files(), headers={
                    **auth(), "Upload-Concat": "final;" + " ".join(partials)}) as response:
                assert response.status == 201, await response.text()
                concatenated = response.headers["Location"]
            assert sha256(await stored(database, inspector, concatenated)) == sha256(b"".join(pieces))

            # HeadObject (the completion fallback after NoSuchUpload), through the gateway's own adapter.
            store = gw.app[BACKGROUND].sweeper.store
            object_head = await store.head_object((await row_of(database, with_upload))["s3_key"])
            assert object_head is not None and object_head.size == len(small)
            assert object_head.metadata["upload-id"] == upload_id(with_upload)
            # moto answers a missing key 404 with s3:GetObject alone; AWS answers 403 unless the caller
            # also has s3:ListBucket, which this policy does not grant (see the report on completion.py).
            assert await store.head_object(f"{PREFIX}/zz/never-written") is None

            # DELETE of an unfinished upload aborts its multipart upload ...
            unfinished = await gw.create(3 * MiB)
            unfinished_row = await row_of(database, unfinished)
            await delete(gw, unfinished)
            with pytest.raises(ClientError) as caught:
                inspector.list_parts(Bucket=BUCKET, Key=unfinished_row["s3_key"],
                                     UploadId=unfinished_row["multipart_id"])
            assert error_code(caught) == "NoSuchUpload"
            # ... and of a finished one deletes its object.
            finished_key = (await row_of(database, with_upload))["s3_key"]
            await delete(gw, with_upload)
            with pytest.raises(ClientError) as caught:
                inspector.head_object(Bucket=BUCKET, Key=finished_key)
            assert error_code(caught) == "404"

            # One sweeper pass: an expired upload aborted, an orphaned S3 upload (a crash between
            # CreateMultipartUpload and the INSERT) found by ListMultipartUploads and aborted, a live one kept.
            alive = await row_of(database, await gw.create(1000))
            expiring = await row_of(database, await gw.create(1000))
            orphan = user.create_multipart_upload(Bucket=BUCKET, Key=f"{PREFIX}/zz/orphan")["UploadId"]
            conn = await asyncpg.connect(database)
            try:
                await conn.execute("update uploads set expires_at = now() - interval '1 second' where id = $1",
                                   expiring["id"])
            finally:
                await conn.close()
            sweeper = gw.app[BACKGROUND].sweeper
            sweeper.next_orphan_scan = 0  # due now (the startup pass did one) ...
            sweeper.orphan_grace = 0  # ... and for every upload without a live row (see GATEWAY_ORPHAN_GRACE)
            report = await sweeper.run_once()
            assert (report.expired, report.orphans_aborted) == (1, 1)
            listed = inspector.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{PREFIX}/").get("Uploads", [])
            assert {u["UploadId"] for u in listed} == {alive["multipart_id"]}
            assert orphan != alive["multipart_id"]

            assert (await readiness(gw))[0] == 200

    unexpected = [m for m in gateway_warnings(caplog) if not m.startswith(MOTO_MULTI_DELETE)]
    assert unexpected == []
    assert any(m.startswith(MOTO_MULTI_DELETE[1]) for m in gateway_warnings(caplog))


async def _stash_key(database: str, location: str) -> str:
    conn = await asyncpg.connect(database)
    try:
        key = await conn.fetchval("select s3_key from upload_stash where upload_id = $1", upload_id(location))
    finally:
        await conn.close()
    assert isinstance(key, str)
    return key


async def test_without_delete_object_the_object_stays(stack: StackInfo, moto: Moto, database: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The negative control: the policy minus s3:DeleteObject, and moto refuses the gateway's DeleteObject."""
    keys = policy_user(moto, filled(RUNTIME_POLICY, moto.kms_key_arn, without={"s3:DeleteObject"}))
    inspector = moto.client("s3", *policy_user(moto, INSPECTOR))
    with moto.enforced():
        async with running(gateway_settings(stack, moto, database, keys)) as gw:
            data = os.urandom(1000)
            location = await gw.create(len(data))
            await patch(gw, location, 0, data)
            key = (await row_of(database, location))["s3_key"]
            # The row is a tombstone first; the failed S3 cleanup is logged, the client gets its 204.
            await delete(gw, location)
            assert (await row_of(database, location))["state"] == "terminated"
            assert inspector.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    messages = gateway_warnings(caplog)
    assert "S3 DeleteObject failed: AccessDenied" in messages
    assert any(m.startswith(f"cleanup after DELETE of {upload_id(location)} failed") for m in messages)


async def readiness(gw: Gateway) -> tuple[int, str]:
    """/readyz, asked again while a probe only timed out: moto runs in this process and, enforcing IAM,
    can hold the GIL past the probes' 2 s on a busy machine."""
    for _ in range(5):
        async with gw.http.get(f"{gw.url}/readyz") as response:
            status, body = response.status, await response.text()
        if status == 200 or "TimeoutError" not in body:
            break
    return status, body


async def test_readyz_needs_list_multipart_uploads(stack: StackInfo, moto: Moto, database: str) -> None:
    keys = policy_user(moto, filled(RUNTIME_POLICY, moto.kms_key_arn, without={"s3:ListBucketMultipartUploads"}))
    with moto.enforced():
        async with running(gateway_settings(stack, moto, database, keys)) as gw, \
                gw.http.get(f"{gw.url}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["failing"] == {"s3": "UploadError"}


async def test_setup_policy_is_what_gateway_s3_setup_needs(stack: StackInfo, moto: Moto, database: str) -> None:
    """`gateway s3 setup` runs with deploy/iam-policy-setup.json; the runtime policy cannot run it."""
    setup = filled(SETUP_POLICY)
    # moto authorizes HeadBucket as an action "s3:HeadBucket" (its ACTION_MAP); AWS as s3:ListBucket,
    # which the file grants. Only for moto:
    setup["Statement"].append({"Effect": "Allow", "Action": "s3:HeadBucket", "Resource": f"arn:aws:s3:::{BUCKET}"})
    setup_keys = policy_user(moto, setup)
    runtime_keys = policy_user(moto, filled(RUNTIME_POLICY, moto.kms_key_arn))
    with moto.enforced():
        result = await apply_bucket_setup(gateway_settings(stack, moto, database, setup_keys))
        assert not result.bucket_created
        with pytest.raises(SetupError):
            await apply_bucket_setup(gateway_settings(stack, moto, database, runtime_keys))
    admin = moto.client("s3")
    assert CORS_RULE_ID in {r.get("ID") for r in admin.get_bucket_cors(Bucket=BUCKET)["CORSRules"]}
    rules = {r["ID"] for r in admin.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    assert {ABORT_RULE_ID, STASH_RULE_ID} <= rules


# -- object settings (enforcement off) ---------------------------------------------------------------------


@pytest.mark.parametrize("sse", ["AES256", "aws:kms"])
async def test_object_settings_reach_every_object(stack: StackInfo, moto: Moto, database: str, sse: str) -> None:
    if sse == "AES256":
        env = {"s3_sse": "AES256", "s3_storage_class": "STANDARD_IA"}
        expected = {"ServerSideEncryption": "AES256", "StorageClass": "STANDARD_IA", "SSEKMSKeyId": None}
    else:
        env = {"s3_sse": "aws:kms", "s3_sse_kms_key_id": moto.kms_key_arn}
        # STANDARD is not named in HeadObject (by AWS nor moto).
        expected = {"ServerSideEncryption": "aws:kms", "StorageClass": None, "SSEKMSKeyId": moto.kms_key_arn}
    admin = moto.client("s3")
    prefix = f"settings-{uuid.uuid4().hex[:8]}"

    def settings_of(key: str) -> dict[str, Any]:
        response = admin.head_object(Bucket=BUCKET, Key=key)
        return {name: response.get(name) for name in expected}

    async with running(gateway_settings(stack, moto, database, (ROOT_KEY, ROOT_KEY), prefix, **env)) as gw:
        # The proxy path: a stash segment, then two parts.
        data = os.urandom(PART + 4321)
        location = await gw.create(len(data), **{"Upload-Metadata": METADATA})
        await patch(gw, location, 0, data[:MiB])
        # Short-lived stash segments are encrypted but keep the default storage class (IA classes bill
        # every object for 30 days).
        assert settings_of(await _stash_key(database, location)) == {**expected, "StorageClass": None}
        await patch(gw, location, MiB, data[MiB:])
        empty = await gw.create(0, **{"Upload-Metadata": METADATA})
        for upload, size in ((location, len(data)), (empty, 0)):
            row = await row_of(database, upload)
            assert row["state"] == "completed"
            response = admin.head_object(Bucket=BUCKET, Key=row["s3_key"])
            assert settings_of(row["s3_key"]) == expected
            assert response["ContentLength"] == size
            assert response["ContentType"] == "application/pdf"
            assert response["ContentDisposition"] == DISPOSITION
            # User metadata keeps the name without the client's path, folded to ASCII (headers carry it).
            assert response["Metadata"] == {"upload-id": upload_id(upload), "filename": "re sume.pdf",
                                            "filetype": "application/pdf"}
        assert sha256(admin.get_object(Bucket=BUCKET, Key=(await row_of(database, location))["s3_key"])[
            "Body"].read()) == sha256(data)
