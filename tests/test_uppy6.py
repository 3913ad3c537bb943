"""Uppy 6's S3 plugin (@uppy/aws-s3 6 with `signRequest`) through clients/js `uppySignRequest`.

tests/uppy6/uppy6_s3_upload.mjs runs real @uppy/core 6 + @uppy/aws-s3 6 in Node (an XHR on fetch stands
in for the browser's); tests/uppy6/browser.mjs bundles the same with esbuild into headless Chromium.
Checked: the bytes in S3 (sha256), the upload's row, that part bytes never pass through the gateway,
quotas, pause/resume, a reload's resume, abort, small files (Uppy's single PUT) and the XML routes.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import pytest
from asyncpg import Connection

from gateway.embedded import StackInfo
from gateway.http.s3_api import completion_numbers, filename_of
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, make_settings, running, upload_id
from tests.support.js import UPPY6, install_uppy6_packages
from tests.support.node import NodeFailed, node_requirement, run_script, write_file
from tests.support.storage import stored_sha256
from tests.support.tokens import auth, token

PART = 5 * MiB
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

needs_node = node_requirement("the Uppy 6 tests")


@pytest.fixture(scope="session")
def uppy6_packages() -> Path:
    return install_uppy6_packages()


async def run_uppy6(gw: Gateway, path: Path, subject: str = "uppy6", timeout: float = 120, **options: Any
                    ) -> dict[str, Any]:
    return await run_script(UPPY6, "uppy6_s3_upload.mjs",
                            {"endpoint": gw.files(), "token": token(subject), "file": str(path), **options}, timeout)


def sent_to(result: dict[str, Any], gw: Gateway) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Uppy's requests split into (to the gateway, to S3)."""
    gateway_host = urlsplit(gw.url).netloc
    mine = [r for r in result["requests"] if urlsplit(r["url"]).netloc == gateway_host]
    return mine, [r for r in result["requests"] if urlsplit(r["url"]).netloc != gateway_host]


# --- real Uppy 6 in Node -------------------------------------------------------------------------------------


@needs_node
async def test_uppy6_multipart_upload_lands_intact_with_parts_straight_to_s3(
        uppy6_packages: Path, gateway: Gateway, db: Connection, s3: Any, tmp_path: Path) -> None:
    path = tmp_path / "holiday video.mp4"
    size = 23 * MiB + 123
    digest = write_file(path, size)
    result = await run_uppy6(gateway, path, type="video/mp4")

    location = result["uploadURL"]
    assert location == gateway.files(f"/{upload_id(location)}")
    assert await stored_sha256(db, s3, location) == digest
    row = await upload_row(db, upload_id(location))
    assert row is not None and row["state"] == "completed" and row["length"] == size
    assert result["body"]["key"] == row["s3_key"]  # the gateway's object key, not the one Uppy proposed
    to_gateway, to_s3 = sent_to(result, gateway)
    parts = math.ceil(size / PART)
    # Every part went to S3 once; the gateway got the create and the complete, never a part's bytes.
    assert sorted(urlsplit(r["url"]).query.count("partNumber") for r in to_s3) == [1] * parts
    assert all(r["status"] == 200 for r in to_s3)
    assert [(r["method"], urlsplit(r["url"]).path.rsplit("/", 1)[-1]) for r in to_gateway] == [
        ("POST", "s3"), ("POST", "s3")]
    assert all((r["size"] or 0) < 64 * 1024 for r in to_gateway)
    # Part URLs are signed ahead: one sign request for all 5 parts.
    assert [c["url"].rsplit("/", 2)[-2:] for c in result["signCalls"]] == [["s3", "urls"]]
    async with gateway.http.get(location, headers={**auth("uppy6"), "Accept": "application/json"}) as response:
        assert response.status == 200
    events = await db.fetchval("select count(*) from events where upload_id = $1 and type = 'completed'",
                               upload_id(location))
    assert events == 1


@needs_node
async def test_uppy6_small_file_single_put_is_tracked_and_lands(uppy6_packages: Path, gateway: Gateway, db: Connection,
                                                                s3: Any, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    digest = write_file(path, 3 * MiB + 17)
    result = await run_uppy6(gateway, path, type="text/plain", shouldUseMultipart=None)  # the plugin's default
    location = result["uploadURL"]
    assert location == gateway.files(f"/{upload_id(location)}")
    assert await stored_sha256(db, s3, location) == digest
    row = await upload_row(db, upload_id(location))
    assert row is not None and row["state"] == "completed"
    assert json.loads(row["metadata"]) == {"filename": "notes.txt", "filetype": "text/plain"}
    puts = [r for r in result["requests"] if r["method"] == "PUT"]
    assert [(urlsplit(r["url"]).path, r["status"]) for r in puts] == [(urlsplit(location).path, 200)]


@needs_node
async def test_uppy6_empty_file(uppy6_packages: Path, gateway: Gateway, db: Connection, s3: Any,
                                tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    result = await run_uppy6(gateway, path)  # shouldUseMultipart: true, but Uppy PUTs an empty file
    assert await stored_sha256(db, s3, result["uploadURL"]) == hashlib.sha256(b"").hexdigest()


@needs_node
async def test_uppy6_pause_resume_and_reload_resume_upload_each_part_once(
        uppy6_packages: Path, gateway: Gateway, db: Connection, s3: Any, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    size = 4 * PART + 999
    digest = write_file(path, size)
    paused = await run_uppy6(gateway, path, pauseAfterParts=2)
    assert await stored_sha256(db, s3, paused["uploadURL"]) == digest

    stopped = await run_uppy6(gateway, path, stopAfterParts=2)
    assert stopped["stopped"]
    saved = stopped["s3Multipart"]
    resumed = await run_uppy6(gateway, path, restore=saved)
    assert resumed["uploadURL"] == gateway.files(f"/{saved['uploadId']}")
    assert await stored_sha256(db, s3, resumed["uploadURL"]) == digest
    # The reloaded page listed the parts and uploaded only the ones S3 did not hold.
    _, to_s3 = sent_to(resumed, gateway)
    assert sorted(int(urlsplit(r["url"]).query.split("partNumber=")[1].split("&")[0]) for r in to_s3) == [3, 4, 5]


@needs_node
async def test_uppy6_remove_file_aborts_the_upload(uppy6_packages: Path, gateway: Gateway, db: Connection,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "cancelled.bin"
    write_file(path, 3 * PART)
    result = await run_uppy6(gateway, path, removeAfterParts=1)
    row = await upload_row(db, result["s3Multipart"]["uploadId"])
    assert row is not None and row["state"] == "terminated"
    aborts = [r for r in result["requests"] if r["method"] == "DELETE"]
    assert [r["status"] for r in aborts] == [204]


@needs_node
async def test_uppy6_uploads_obey_the_owners_byte_quota(uppy6_packages: Path, stack: StackInfo, db: Connection,
                                                        tmp_path: Path) -> None:
    settings = make_settings(stack, max_active_uploads_per_owner=100, max_active_bytes_per_owner=12 * MiB)
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    write_file(big, 4 * PART)
    write_file(small, 13 * MiB)
    async with running(settings) as gw:
        with pytest.raises(NodeFailed) as failed:
            await run_uppy6(gw, big, subject="q-uppy6")
        # Parts 1-3 fit the 12 MiB (part 3 starts at 10 MiB); part 4 is refused before a byte is sent.
        assert failed.value.details["uploadErrors"][0][0]["status"] == 403
        assert failed.value.details["uploadErrors"][0][0]["body"]["error"]["code"] == "quota_exceeded"
        with pytest.raises(NodeFailed) as refused:
            await run_uppy6(gw, small, subject="q-uppy6-put", shouldUseMultipart=False)
        puts = [r for r in refused.value.details["requests"] if r["method"] == "PUT"]
        assert puts and all(r["status"] == 403 for r in puts)
    stored = await db.fetchval("select count(*) from uploads where owner_sub = 'q-uppy6-put' and state = 'completed'")
    assert stored == 0


CHROMIUM = Path("/usr/bin/chromium")


@needs_node
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's Chromium at /usr/bin/chromium")
async def test_uppy6_in_chromium_pauses_resumes_and_resumes_after_a_reload(
        uppy6_packages: Path, gateway: Gateway, db: Connection, s3: Any, tmp_path: Path) -> None:
    path = tmp_path / "from-the-browser.bin"
    size = 5 * PART + 4321
    digest = write_file(path, size)
    result = await run_script(UPPY6, "browser.mjs", {
        "origin": gateway.url, "endpoint": gateway.files(), "token": token("uppy6-browser"), "file": str(path),
        "stopAfterParts": 3}, timeout=180)
    first, second = result["first"], result["second"]
    assert second["uploadURL"] == gateway.files(f"/{first['s3Multipart']['uploadId']}"), result["log"]
    assert await stored_sha256(db, s3, second["uploadURL"]) == digest
    # The parts went from the browser to S3, not to the gateway.
    s3_origin = {p["origin"] for p in first["putParts"] + second["putParts"]}
    assert s3_origin and gateway.url not in s3_origin
    # No part was uploaded twice: the reloaded page listed what S3 held and sent only the rest (a part the
    # first page finished while it was being closed is held too, so it is in neither list).
    assert first["partEvents"] == [1, 2, 3] and second["partEvents"]
    assert set(second["partEvents"]).isdisjoint(first["partEvents"]) and max(second["partEvents"]) == 6


# --- the S3-shaped routes themselves ---------------------------------------------------------------------------


def xml(text: str) -> ElementTree.Element:
    return ElementTree.fromstring(text)


async def test_create_list_complete_abort_answer_s3_xml(gateway: Gateway, db: Connection, s3: Any) -> None:
    headers = auth("xml-user")
    async with gateway.http.post(gateway.files("/s3?uploads&key=0b5f3c9e-1d2a-4b6c-8e7f-123456789abc-cat.png"),
                                 headers={**headers, "Content-Type": "image/png"}) as response:
        assert response.status == 200 and response.content_type == "application/xml"
        created = xml(await response.text())
    assert created.tag == f"{NS}InitiateMultipartUploadResult"
    uid = created.findtext(f"{NS}UploadId")
    assert uid is not None
    row = await upload_row(db, uid)
    assert row is not None and json.loads(row["metadata"]) == {"filename": "cat.png", "filetype": "image/png"}
    assert created.findtext(f"{NS}Key") == row["s3_key"]

    async with gateway.http.post(gateway.files(f"/{uid}/s3/urls"), json={"parts": [1, 2]}, headers=headers) as response:
        assert response.status == 200
        signed = await response.json()
    assert set(signed["urls"]) == {"1", "2"} and signed["expires_in"] > 0
    for number, body in (("1", b"a" * PART), ("2", b"tail")):
        async with gateway.http.put(signed["urls"][number], data=body) as response:
            assert response.status == 200

    async with gateway.http.get(gateway.files(f"/{uid}/s3"), headers=headers) as response:
        assert response.status == 200
        listed = xml(await response.text())
    parts = [(p.findtext(f"{NS}PartNumber"), p.findtext(f"{NS}Size"), p.findtext(f"{NS}ETag"))
             for p in listed.iter(f"{NS}Part")]
    assert [(n, s) for n, s, _ in parts] == [("1", str(PART)), ("2", "4")]
    assert all(e and e.startswith('"') for _, _, e in parts)

    listed_parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, _, e in parts)
    document = f"<CompleteMultipartUpload>{listed_parts}</CompleteMultipartUpload>"
    async with gateway.http.post(gateway.files(f"/{uid}/s3"), data=document,
                                 headers={**headers, "Content-Type": "application/xml"}) as response:
        assert response.status == 200
        done = xml(await response.text())
    assert done.findtext(f"{NS}Location") == gateway.files(f"/{uid}")
    assert done.findtext(f"{NS}Key") == row["s3_key"]
    assert await stored_sha256(db, s3, uid) == hashlib.sha256(b"a" * PART + b"tail").hexdigest()
    # A completed upload has nothing to abort (S3 never deletes an object on AbortMultipartUpload).
    async with gateway.http.delete(gateway.files(f"/{uid}/s3"), headers=headers) as response:
        assert response.status == 409


async def test_s3_routes_refuse_bad_requests_with_json_errors(gateway: Gateway, db: Connection) -> None:
    headers = auth("xml-bad")
    async with gateway.http.post(gateway.files("/s3?uploads"), headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_request"
    async with gateway.http.post(gateway.files("/s3?uploads&key=a.bin")) as response:
        assert response.status == 401
    async with gateway.http.post(gateway.files("/s3?uploads&key=a.bin"), headers=headers) as response:
        uid = xml(await response.text()).findtext(f"{NS}UploadId")
    for body in ({"parts": []}, {"parts": ["1"]}, {"parts": [0]}, {"parts": [10001]}, {}):
        async with gateway.http.post(gateway.files(f"/{uid}/s3/urls"), json=body, headers=headers) as response:
            assert response.status == 400, body
    for document in ("not xml", "<CompleteMultipartUpload/>",
                     "<CompleteMultipartUpload><Part><PartNumber>x</PartNumber></Part></CompleteMultipartUpload>"):
        async with gateway.http.post(gateway.files(f"/{uid}/s3"), data=document, headers=headers) as response:
            assert response.status == 400, document
            assert (await response.json())["error"]["code"] == "invalid_request"
    # Another owner sees nothing of it.
    for method, path in (("GET", "/s3"), ("POST", "/s3/urls"), ("DELETE", "/s3"), ("PUT", "")):
        async with gateway.http.request(method, gateway.files(f"/{uid}{path}"), json={"parts": [1]},
                                        headers=auth("xml-other")) as response:
            assert response.status == 404, (method, path)
    # A PUT without a length, or of another length than declared, changes nothing.
    async with gateway.http.put(gateway.files(f"/{uid}"), data=b"12345", headers=headers) as response:
        assert response.status == 200
    async with gateway.http.put(gateway.files(f"/{uid}"), data=b"123456", headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "inconsistent_length"
    row = await upload_row(db, uid)
    assert row is not None and row["state"] in ("completing", "completed") and row["length"] == 5
    # Abort of an unfinished upload ends it.
    async with gateway.http.post(gateway.files("/s3?uploads&key=b.bin"), headers=headers) as response:
        other = xml(await response.text()).findtext(f"{NS}UploadId")
    async with gateway.http.delete(gateway.files(f"/{other}/s3"), headers=headers) as response:
        assert response.status == 204
    row = await upload_row(db, other)
    assert row is not None and row["state"] == "terminated"


async def test_sign_ahead_stops_where_the_quota_ends(stack: StackInfo) -> None:
    settings = make_settings(stack, max_active_uploads_per_owner=100, max_active_bytes_per_owner=12 * MiB)
    async with running(settings) as gw:
        headers = auth("q-ahead")
        async with gw.http.post(gw.files("/s3?uploads&key=a.bin"), headers=headers) as response:
            uid = xml(await response.text()).findtext(f"{NS}UploadId")
        async with gw.http.post(gw.files(f"/{uid}/s3/urls"), json={"parts": list(range(1, 17))},
                                headers=headers) as response:
            assert response.status == 200
            assert sorted(map(int, (await response.json())["urls"])) == [1, 2, 3]
        async with gw.http.post(gw.files(f"/{uid}/s3/urls"), json={"parts": [4, 5]}, headers=headers) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "quota_exceeded"


def test_file_names_and_completion_documents() -> None:
    assert filename_of("0b5f3c9e-1d2a-4b6c-8e7f-123456789abc-cat.png") == "cat.png"
    assert filename_of("albums/2026/beach.jpg") == "beach.jpg"
    assert filename_of("0b5f3c9e-1d2a-4b6c-8e7f-123456789abc-") == "0b5f3c9e-1d2a-4b6c-8e7f-123456789abc-"
    assert completion_numbers(b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                              b"<Part><ETag>&quot;x&quot;</ETag><PartNumber>2</PartNumber></Part>"
                              b"<Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>") == [2, 1]
