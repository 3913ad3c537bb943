"""S3 credentials from the standard AWS chain, rotating while uploads run (a credential_process that
hands out a new key pair each time, as STS-backed helpers do), against a SeaweedFS that verifies every
signature; and the static keys and chain settings refused or accepted as documented."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.config import ConfigError, load_settings
from gateway.embedded import EmbeddedSeaweed
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.direct import confirm, put_part, sign_ok
from tests.support.gateway import make_settings, running
from tests.support.storage import sha256, stored_bytes
from tests.support.tokens import auth

KEYS = [("GWROT" + secrets.token_hex(6).upper(), secrets.token_urlsafe(30)) for _ in range(12)]
LIFETIME = 20  # seconds: the gateway refreshes at half life, so keys rotate every ~10 s
PART = 5 * MiB

CREDENTIAL_PROCESS = textwrap.dedent("""
    import json, sys, datetime, pathlib
    state = pathlib.Path(sys.argv[1])
    keys = json.loads((state / "keys.json").read_text())
    counter = state / "calls"
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    key, secret = keys[min(n, len(keys) - 1)]
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=int(sys.argv[2]))
    with (state / "issued.log").open("a") as log:
        log.write(json.dumps([key, expires.isoformat()]) + "\\n")
    print(json.dumps({"Version": 1, "AccessKeyId": key, "SecretAccessKey": secret,
                      "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}))
""")


@pytest.fixture(scope="module")
def rotating_s3() -> Iterator[tuple[str, Path]]:
    """A SeaweedFS that knows every key the credential process will hand out (and no other)."""
    with tempfile.TemporaryDirectory(prefix="gateway-rotation-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        (state / "keys.json").write_text(json.dumps(KEYS))
        seaweed = EmbeddedSeaweed(Path(tmp) / "weed", bucket="rotation", extra_keys=KEYS)
        endpoint, _, _ = seaweed.start()
        try:
            yield endpoint, state
        finally:
            seaweed.stop()


@pytest.fixture
def aws_profile(rotating_s3: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    _, state = rotating_s3
    script = state / "credential_process.py"
    script.write_text(CREDENTIAL_PROCESS)
    config = state / "aws_config"
    config.write_text(f"[profile rotating]\ncredential_process = {sys.executable} {script} {state} {LIFETIME}\n")
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(state / "no-credentials"))
    monkeypatch.setenv("AWS_PROFILE", "rotating")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return state


def issued(state: Path) -> dict[str, datetime]:
    lines = (state / "issued.log").read_text().splitlines()
    return {key: datetime.fromisoformat(expires) for key, expires in map(json.loads, lines)}


async def test_rotating_credentials_lose_no_upload(stack, rotating_s3, aws_profile, db) -> None:  # type: ignore[no-untyped-def]
    endpoint, state = rotating_s3
    settings = make_settings(stack, s3_endpoint_url=endpoint, s3_bucket="rotation", s3_access_key_id="",
                             s3_secret_access_key="", s3_key_prefix="rot")
    s3 = seaweed_client(endpoint)
    async with running(settings) as gw:
        started = asyncio.get_running_loop().time()
        uploads = []
        # Direct and proxy uploads, one after another, for two credential lifetimes.
        while asyncio.get_running_loop().time() - started < 2 * LIFETIME:
            data = os.urandom(2 * PART + 1234)
            location = await gw.create(len(data), **{"Upload-Part-Size": str(PART)})
            if len(uploads) % 2 == 0:
                for number, part in (await sign_ok(gw, location, [1, 2, 3])).items():
                    url = urlsplit(part["url"])
                    query = parse_qs(url.query)
                    key = query["X-Amz-Credential"][0].split("/")[0]
                    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                    url_end = signed_at + timedelta(seconds=int(query["X-Amz-Expires"][0]))
                    # A presigned URL never outlives the credentials that signed it.
                    assert url_end <= issued(state)[key], (url_end, issued(state)[key])
                    assert await put_part(gw, part, data[part["offset"]:part["offset"] + part["length"]]) == 200
                    assert (await confirm(gw, location, number))[0] == 204
            else:
                for offset in range(0, len(data), 3 * MiB):
                    async with gw.http.patch(location, data=data[offset:offset + 3 * MiB], headers={
                            **auth(), "Content-Type": "application/offset+octet-stream",
                            "Upload-Offset": str(offset)}) as response:
                        assert response.status == 204, await response.text()
                    await asyncio.sleep(0.5)
            uploads.append((location, data))
        for location, data in uploads:
            row = await upload_row(db, location.rsplit("/", 1)[-1])
            assert row["state"] == "completed"
            assert sha256(stored_bytes(s3, "rotation", row["s3_key"])) == sha256(data)
    # No restart, several key pairs used in turn.
    assert len(issued(state)) >= 3, issued(state)
    assert len(uploads) >= 4


def seaweed_client(endpoint: str):  # type: ignore[no-untyped-def]
    import botocore.session
    from botocore.config import Config

    key, secret = KEYS[-1]
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


def test_static_keys_come_in_pairs() -> None:
    base = {"GATEWAY_AUTH": "none"}
    with pytest.raises(ConfigError, match="GATEWAY_S3_ACCESS_KEY_ID"):
        load_settings({**base, "GATEWAY_S3_ACCESS_KEY_ID": "AKID"})
    assert load_settings(base).s3_access_key_id == ""  # the chain then
    assert load_settings(base).s3_endpoint == "https://s3.us-east-1.amazonaws.com"
