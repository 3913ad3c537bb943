"""Uppy's S3 plugin (@uppy/aws-s3 5.x) through the gateway's Companion-compatible `/s3/multipart` routes.

The Node tests run tests/uppy/uppy_s3_upload.mjs (real @uppy/core + @uppy/aws-s3, `endpoint` = the
gateway, `headers` = Authorization) and check the S3 object's sha256; tests/uppy/node_modules is
installed by the `uppy_packages` fixture with `npm ci` from tests/uppy/package-lock.json. The direct HTTP
tests check each route's JSON shape and error cases and need no Node.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from asyncpg import Connection
from yarl import URL

from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway
from tests.support.node import NodeFailed, node_requirement, npm_ci, run_script, write_file
from tests.support.storage import stored_sha256
from tests.support.tokens import auth, bearer, token

UPPY = Path(__file__).parent / "uppy"
NODE_TIMEOUT = 120.0
PART = 5 * MiB  # the part size of uploads created through /s3/multipart (Uppy's default chunk size)


needs_node = node_requirement("the Uppy tests")


@pytest.fixture(scope="session")
def uppy_packages() -> Path:
    return npm_ci(UPPY, ("@uppy/core", "@uppy/aws-s3"))


async def run_uppy(options: dict[str, Any], timeout: float = NODE_TIMEOUT) -> dict[str, Any]:
    """Run tests/uppy/uppy_s3_upload.mjs with JSON options; its last stdout line is the JSON result."""
    return await run_script(UPPY, "uppy_s3_upload.mjs", options, timeout)


def uppy_options(gw: Gateway, path: Path, subject: str = "uppy-s3", **options: Any) -> dict[str, Any]:
    return {"endpoint": gw.url, "token": token(subject), "file": str(path), **options}


def gateway_calls(result: dict[str, Any], gw: Gateway) -> list[tuple[str, str, int | None]]:
    """(method, route, status) of the calls Uppy made to the gateway, ids and queries left out."""
    calls = []
    for r in result["requests"]:
        path = urlsplit(r["path"]).path
        pieces = path.split("/")  # ['', 's3', 'multipart', id, (number|complete|batch)]
        if len(pieces) > 3:
            pieces[3] = "{id}"
        if len(pieces) > 4 and pieces[4].isdigit():
            pieces[4] = "{n}"
        calls.append((r["method"], "/".join(pieces), r["status"]))
    return calls


def successful_puts(result: dict[str, Any]) -> list[int]:
    return sorted(p["partNumber"] for p in result["puts"] if p["status"] == 200)


# --- real Uppy ---------------------------------------------------------------------------------------------


@needs_node
async def test_uppy_uploads_multipart_through_the_gateway(uppy_packages: Path, gateway: Gateway, db: Connection,
                                                          s3: Any, tmp_path: Path) -> None:
    path = tmp_path / "holiday video.bin"
    size = 23 * MiB + 123
    digest = write_file(path, size)
    result = await run_uppy(uppy_options(gateway, path, meta={"album": "2026", "caption": "été"}))

    upload_id = result["s3Multipart"]["uploadId"]
    location = gateway.files(f"/{upload_id}")
    assert result["uploadURL"] == location  # upload-success's uploadURL is the complete's `location`
    assert result["body"]["location"] == location and result["body"]["key"] == result["s3Multipart"]["key"]
    assert result["progress"] == size
    calls = gateway_calls(result, gateway)
    assert calls[0] == ("POST", "/s3/multipart", 200)
    assert calls[1:-1] == [("GET", "/s3/multipart/{id}/{n}", 200)] * 5  # one signPart per part
    assert calls[-1] == ("POST", "/s3/multipart/{id}/complete", 200)
    assert successful_puts(result) == [1, 2, 3, 4, 5]
    assert sorted(p["size"] for p in result["puts"]) == [size - 4 * PART] + [PART] * 4
    assert [e["PartNumber"] for e in sorted(result["partEvents"], key=lambda e: e["PartNumber"])] == [1, 2, 3, 4, 5]

    assert await stored_sha256(db, s3, upload_id) == digest
    row = await upload_row(db, upload_id)
    assert row["owner_sub"] == "uppy-s3" and row["length"] == size and row["part_size"] == PART
    assert row["s3_key"] == result["s3Multipart"]["key"]
    metadata = json.loads(row["metadata"])
    assert metadata["filename"] == metadata["name"] == "holiday video.bin"
    assert metadata["filetype"] == metadata["type"] == "application/octet-stream"
    assert metadata["album"] == "2026" and metadata["caption"] == "été"
    # The location is the gateway's download URL for the owner.
    async with gateway.http.get(location, headers={**auth("uppy-s3"), "Accept": "application/json"}) as response:
        assert response.status == 200
        assert "url" in await response.json()


@needs_node
async def test_uppy_pause_and_resume_lists_the_parts_s3_holds(uppy_packages: Path, gateway: Gateway,
                                                              db: Connection, s3: Any, tmp_path: Path) -> None:
    """uppy.pauseResume() after 2 parts: on resume the plugin lists the parts and uploads only the rest.

    Nothing is confirmed before complete (Uppy never confirms), so the list comes from the core's
    reconcile of signed, unconfirmed parts with S3.
    """
    path = tmp_path / "paused.bin"
    size = 23 * MiB + 5
    digest = write_file(path, size)
    result = await run_uppy(uppy_options(gateway, path, limit=1, pauseAfterParts=2, resumeDelayMs=200))

    calls = gateway_calls(result, gateway)
    lists = [r for r in result["requests"] if r["method"] == "GET" and "/" not in
             urlsplit(r["path"]).path.removeprefix("/s3/multipart/")]
    assert len(lists) == 1 and lists[0]["status"] == 200, calls
    listed = lists[0]["body"]
    assert all(set(p) == {"PartNumber", "Size", "ETag"} for p in listed)
    numbers = [p["PartNumber"] for p in listed]
    assert numbers[:2] == [1, 2] and all(p["Size"] == PART for p in listed)
    # every part reached S3 exactly once: the listed ones were not uploaded again
    assert successful_puts(result) == [1, 2, 3, 4, 5]
    assert ("DELETE", "/s3/multipart/{id}", 200) not in calls
    assert calls[-1] == ("POST", "/s3/multipart/{id}/complete", 200)
    assert result["progress"] == size
    assert await stored_sha256(db, s3, result["s3Multipart"]["uploadId"]) == digest


@needs_node
async def test_uppy_restores_an_upload_after_a_reload(uppy_packages: Path, gateway: Gateway, db: Connection,
                                                      s3: Any, tmp_path: Path) -> None:
    """The tab closes after 2 parts (nothing aborted); a new Uppy restores {uploadId, key} the way
    @uppy/golden-retriever does: list parts first, upload the missing ones, complete. No new upload."""
    path = tmp_path / "reload.bin"
    size = 22 * MiB + 999
    digest = write_file(path, size)
    first = await run_uppy(uppy_options(gateway, path, limit=1, stopAfterParts=2))
    assert first["stopped"]
    saved = first["s3Multipart"]
    assert set(saved) == {"uploadId", "key"}
    assert {1, 2} <= set(successful_puts(first))
    assert (await upload_row(db, saved["uploadId"]))["state"] == "active"

    second = await run_uppy(uppy_options(gateway, path, restore=saved))
    calls = gateway_calls(second, gateway)
    assert calls[0] == ("GET", "/s3/multipart/{id}", 200), calls  # listParts, no createMultipartUpload
    assert ("POST", "/s3/multipart", 200) not in calls
    listed = {p["PartNumber"] for p in second["requests"][0]["body"]}
    assert {1, 2} <= listed
    assert set(successful_puts(second)) == {1, 2, 3, 4, 5} - listed
    assert second["s3Multipart"]["uploadId"] == saved["uploadId"]
    assert second["uploadURL"] == gateway.files(f"/{saved['uploadId']}")
    assert await stored_sha256(db, s3, saved["uploadId"]) == digest
    assert (await upload_row(db, saved["uploadId"]))["length"] == size


@needs_node
async def test_uppy_with_its_default_should_use_multipart_asks_for_s3_params(uppy_packages: Path, gateway: Gateway,
                                                                            tmp_path: Path) -> None:
    """The plugin's default `shouldUseMultipart` is `file.size > 100 MiB`: smaller files go to
    GET /s3/params (one presigned POST), which the gateway refuses with a message."""
    path = tmp_path / "small.bin"
    write_file(path, 1 * MiB)
    with pytest.raises(NodeFailed) as failed:
        await run_uppy(uppy_options(gateway, path, shouldUseMultipart=None))
    details = failed.value.details
    [request] = details["requests"]
    assert request["path"].startswith("/s3/params?filename=small.bin&type=") and request["status"] == 400
    assert "shouldUseMultipart: true" in request["body"]["error"]["message"]
    assert details["puts"] == []
    [[error, cause]] = details["uploadErrors"]
    assert error["message"].startswith("Could not GET ")
    assert cause["name"] == "HttpError" and cause["message"] == "Failed request with status: 400. Bad Request"


@needs_node
async def test_uppy_small_file_is_one_part(uppy_packages: Path, gateway: Gateway, db: Connection, s3: Any,
                                           tmp_path: Path) -> None:
    """With shouldUseMultipart: true a file of 5 MiB or less is a multipart upload of one part."""
    path = tmp_path / "tiny.txt"
    digest = write_file(path, 1234)
    result = await run_uppy(uppy_options(gateway, path, type="text/plain"))
    assert successful_puts(result) == [1]
    upload_id = result["s3Multipart"]["uploadId"]
    assert await stored_sha256(db, s3, upload_id) == digest
    row = await upload_row(db, upload_id)
    assert row["length"] == 1234
    head = await asyncio.to_thread(s3.head_object, Bucket=row["bucket"], Key=row["s3_key"])
    assert head["ContentType"] == "text/plain"


@needs_node
async def test_uppy_reports_gateway_errors_without_their_message(uppy_packages: Path, gateway: Gateway,
                                                                 tmp_path: Path) -> None:
    """Restoring with a key that is not the upload's: the gateway answers 400 in its JSON error format;
    @uppy/companion-client only surfaces a top-level `message`, so Uppy reports the status."""
    path = tmp_path / "wrong-key.bin"
    write_file(path, 6 * MiB)
    status, created = await create(gateway, subject="uppy-s3")
    assert status == 200
    with pytest.raises(NodeFailed) as failed:
        await run_uppy(uppy_options(gateway, path, restore={"uploadId": created["uploadId"], "key": "other/key"}))
    details = failed.value.details
    assert details["requests"][0]["status"] == 400
    assert details["requests"][0]["body"]["error"]["code"] == "invalid_request"
    [[error, cause]] = details["uploadErrors"]
    assert error["message"].startswith("Could not GET ")
    assert cause["name"] == "HttpError" and cause["statusCode"] == 400
    assert "does not belong" not in cause["message"]  # the gateway's message is not surfaced


# --- the routes over HTTP ----------------------------------------------------------------------------------


def s3_url(gw: Gateway, path: str = "", **query: str) -> str:
    url = f"{gw.url}/s3/multipart{path}"
    if query:
        url += "?" + "&".join(f"{k}={quote(v, safe=',')}" for k, v in query.items())
    return url


async def call(gw: Gateway, method: str, url: str, subject: str | None = "alice",
               body: Any = None, **headers: str) -> tuple[int, Any]:
    sent = {**(bearer(subject) if subject else {}), **headers}
    kwargs: dict[str, Any] = {"headers": sent}
    if body is not None:
        kwargs["data" if isinstance(body, (bytes, str)) else "json"] = body
    async with gw.http.request(method, url, **kwargs) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


async def create(gw: Gateway, subject: str = "alice", **body: Any) -> tuple[int, Any]:
    payload = {"filename": "report.pdf", "type": "application/pdf", "metadata": {"name": "report.pdf"}, **body}
    return await call(gw, "POST", s3_url(gw), subject, payload)


async def created(gw: Gateway, subject: str = "alice") -> dict[str, str]:
    status, body = await create(gw, subject)
    assert status == 200, body
    return body


async def put_part(gw: Gateway, url: str, data: bytes) -> str:
    async with gw.http.put(URL(url, encoded=True), data=data) as response:
        assert response.status == 200, await response.text()
        return response.headers["ETag"]


async def sign_and_put(gw: Gateway, upload: dict[str, str], number: int, data: bytes) -> str:
    status, signed = await call(gw, "GET", s3_url(gw, f"/{upload['uploadId']}/{number}", key=upload["key"]))
    assert status == 200, signed
    return await put_part(gw, signed["url"], data)


def assert_error(status: int, body: Any, expected_status: int, code: str | None = None) -> None:
    assert status == expected_status, body
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    if code is not None:
        assert body["error"]["code"] == code, body


async def test_create_shape_and_upload_row(gateway: Gateway, db: Connection, s3: Any) -> None:
    status, body = await create(gateway, metadata={"name": "report.pdf", "type": "application/pdf", "pages": 12,
                                                   "draft": True, "skip": None})
    assert status == 200
    assert set(body) == {"uploadId", "key", "bucket"}
    row = await upload_row(db, body["uploadId"])
    assert row["s3_key"] == body["key"] and row["bucket"] == body["bucket"] == gateway.settings.s3_bucket
    assert body["key"].startswith(gateway.settings.s3_key_prefix + "/") and "report" not in body["key"]
    assert row["length"] is None and row["part_size"] == PART and row["state"] == "active"
    assert row["owner_sub"] == "alice"
    assert json.loads(row["metadata"]) == {"filename": "report.pdf", "filetype": "application/pdf",
                                           "name": "report.pdf", "type": "application/pdf", "pages": "12",
                                           "draft": "true"}
    uploads = await asyncio.to_thread(s3.list_multipart_uploads, Bucket=body["bucket"], Prefix=body["key"])
    assert [u["Key"] for u in uploads.get("Uploads", [])] == [body["key"]]


@pytest.mark.parametrize(("payload", "status"), [
    ({"type": "text/plain"}, 400),                       # no filename
    ({"filename": "", "type": "text/plain"}, 400),
    ({"filename": "a.txt"}, 400),                        # type must be a string (as Companion)
    ({"filename": "a.txt", "type": 3}, 400),
    ({"filename": "a.txt", "type": "", "metadata": []}, 400),
    ({"filename": "a.txt", "type": "", "metadata": {"bad key": "x"}}, 400),  # tus metadata keys
    (b"{not json", 400),
])
async def test_create_refuses_bad_bodies(gateway: Gateway, payload: Any, status: int) -> None:
    got, body = await call(gateway, "POST", s3_url(gateway), "alice", payload,
                           **({"Content-Type": "application/json"} if isinstance(payload, bytes) else {}))
    assert_error(got, body, status)


async def test_sign_one_part_shape(gateway: Gateway) -> None:
    upload = await created(gateway)
    status, body = await call(gateway, "GET", s3_url(gateway, f"/{upload['uploadId']}/3", key=upload["key"]))
    assert status == 200
    assert set(body) == {"url", "expires"}
    assert body["expires"] == gateway.settings.presign_ttl
    query = parse_qs(urlsplit(body["url"]).query)
    assert query["partNumber"] == ["3"] and query["X-Amz-SignedHeaders"] == ["host"]  # no pinned length
    assert urlsplit(body["url"]).path.endswith("/" + upload["key"])
    await put_part(gateway, body["url"], b"a short part")  # any size: checked at complete


async def test_sign_batch_shape(gateway: Gateway) -> None:
    upload = await created(gateway)
    status, body = await call(gateway, "GET", s3_url(gateway, f"/{upload['uploadId']}/batch", key=upload["key"],
                                                     partNumbers="1,2,7"))
    assert status == 200
    assert set(body) == {"presignedUrls"} and list(body["presignedUrls"]) == ["1", "2", "7"]
    assert parse_qs(urlsplit(body["presignedUrls"]["7"]).query)["partNumber"] == ["7"]
    for bad in ("", "1,a", "0", "10001", "1,-2"):
        status, error = await call(gateway, "GET", s3_url(gateway, f"/{upload['uploadId']}/batch",
                                                          key=upload["key"], partNumbers=bad))
        assert_error(status, error, 400)


async def test_sign_refuses_part_numbers_out_of_range(gateway: Gateway) -> None:
    upload = await created(gateway)
    for number in ("0", "10001"):
        status, body = await call(gateway, "GET", s3_url(gateway, f"/{upload['uploadId']}/{number}", key=upload["key"]))
        assert_error(status, body, 400, "unknown_part")


async def test_list_parts_shows_what_s3_holds_before_any_confirm(gateway: Gateway, s3: Any) -> None:
    upload = await created(gateway)
    status, body = await call(gateway, "GET", s3_url(gateway, f"/{upload['uploadId']}", key=upload["key"]))
    assert (status, body) == (200, [])
    first, second = os.urandom(PART), os.urandom(PART)
    etags = [await sign_and_put(gateway, upload, 1, first), await sign_and_put(gateway, upload, 2, second)]
    status, body = await call(gateway, "GET", s3_url(gateway, f"/{upload['uploadId']}", key=upload["key"]))
    assert status == 200
    assert body == [{"PartNumber": 1, "Size": PART, "ETag": etags[0]},
                    {"PartNumber": 2, "Size": PART, "ETag": etags[1]}]
    multipart = (await asyncio.to_thread(s3.list_multipart_uploads, Bucket=upload["bucket"],
                                         Prefix=upload["key"]))["Uploads"][0]["UploadId"]
    listed = await asyncio.to_thread(s3.list_parts, Bucket=upload["bucket"], Key=upload["key"], UploadId=multipart)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed["Parts"]] == \
        [(p["PartNumber"], p["Size"], p["ETag"]) for p in body]


async def test_list_parts_right_after_another_list_shows_new_parts(gateway: Gateway) -> None:
    upload = await created(gateway)
    url = s3_url(gateway, f"/{upload['uploadId']}", key=upload["key"])
    await sign_and_put(gateway, upload, 1, os.urandom(PART))
    assert [p["PartNumber"] for p in (await call(gateway, "GET", url))[1]] == [1]
    await sign_and_put(gateway, upload, 2, os.urandom(PART))
    assert [p["PartNumber"] for p in (await call(gateway, "GET", url))[1]] == [1, 2]  # no throttle


async def test_list_parts_shows_a_short_last_part(gateway: Gateway) -> None:
    upload = await created(gateway)
    await sign_and_put(gateway, upload, 1, os.urandom(PART))
    await sign_and_put(gateway, upload, 2, b"the end")
    status, body = await call(gateway, "GET", s3_url(gateway, f"/{upload['uploadId']}", key=upload["key"]))
    assert status == 200
    assert [(p["PartNumber"], p["Size"]) for p in body] == [(1, PART), (2, 7)]


async def test_complete_shape_and_object(gateway: Gateway, db: Connection, s3: Any) -> None:
    upload = await created(gateway)
    data = os.urandom(2 * PART + 777)
    etags = [await sign_and_put(gateway, upload, n + 1, data[n * PART:(n + 1) * PART]) for n in range(3)]
    parts = [{"PartNumber": n + 1, "ETag": etag} for n, etag in enumerate(etags)]
    url = s3_url(gateway, f"/{upload['uploadId']}/complete", key=upload["key"])
    status, body = await call(gateway, "POST", url, "alice", {"parts": parts})
    assert status == 200
    location = gateway.files(f"/{upload['uploadId']}")
    assert body == {"location": location, "key": upload["key"], "bucket": upload["bucket"]}
    assert await stored_sha256(db, s3, upload["uploadId"]) == hashlib.sha256(data).hexdigest()
    assert (await upload_row(db, upload["uploadId"]))["length"] == len(data)
    head = await asyncio.to_thread(s3.head_object, Bucket=upload["bucket"], Key=upload["key"])
    assert head["ContentType"] == "application/pdf" and head["Metadata"]["filename"] == "report.pdf"
    # a repeated complete (lost response) answers the same
    assert await call(gateway, "POST", url, "alice", {"parts": parts}) == (200, body)
    # the tus side sees the finished upload
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(len(data))


async def test_complete_refusals(gateway: Gateway, db: Connection) -> None:
    upload = await created(gateway)
    url = s3_url(gateway, f"/{upload['uploadId']}/complete", key=upload["key"])
    for body in ({}, {"parts": []}, {"parts": [{"PartNumber": 1}]}, {"parts": [{"PartNumber": "1", "ETag": "x"}]},
                 {"parts": [1, 2]}):
        status, error = await call(gateway, "POST", url, "alice", body)
        assert_error(status, error, 400, "invalid_request")
    etag = await sign_and_put(gateway, upload, 1, os.urandom(PART))
    await sign_and_put(gateway, upload, 3, os.urandom(10))
    status, error = await call(gateway, "POST", url, "alice",
                               {"parts": [{"PartNumber": 1, "ETag": etag}, {"PartNumber": 3, "ETag": "x"}]})
    assert_error(status, error, 400, "invalid_request")  # a gap
    status, error = await call(gateway, "POST", url, "alice",
                               {"parts": [{"PartNumber": 1, "ETag": etag}, {"PartNumber": 2, "ETag": "x"}]})
    assert_error(status, error, 409, "part_not_visible")  # part 2 is not in S3
    short = await sign_and_put(gateway, upload, 2, os.urandom(100))
    status, error = await call(gateway, "POST", url, "alice", {"parts": [
        {"PartNumber": 1, "ETag": etag}, {"PartNumber": 2, "ETag": short}, {"PartNumber": 3, "ETag": "x"}]})
    assert_error(status, error, 409, "size_mismatch")  # every part but the last must be 5 MiB
    assert (await upload_row(db, upload["uploadId"]))["state"] == "active"


async def _send_in_pieces(gw: Gateway, path: str, body: bytes, split: int) -> tuple[int, Any]:
    """POST on a raw socket: headers and the first `split` body bytes, a pause, then the rest."""
    url = URL(gw.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = (f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {token()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + body[:split])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(body[split:])
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1]), json.loads(answer.split(b"\r\n\r\n", 1)[1])


async def test_json_bodies_arriving_in_pieces_are_read_whole(gateway: Gateway) -> None:
    body = json.dumps({"filename": "split.bin", "type": "", "metadata": {}}).encode()
    status, upload = await _send_in_pieces(gateway, "/s3/multipart", body, 7)
    assert status == 200, upload
    etag = await sign_and_put(gateway, upload, 1, b"12345")
    parts = json.dumps({"parts": [{"PartNumber": 1, "ETag": etag}]}).encode()
    path = f"/s3/multipart/{upload['uploadId']}/complete?key={quote(upload['key'], safe='')}"
    status, done = await _send_in_pieces(gateway, path, parts, 10)
    assert status == 200 and done["key"] == upload["key"], done


async def test_complete_takes_10000_parts_and_refuses_more_than_1_mib(gateway: Gateway) -> None:
    upload = await created(gateway)
    url = s3_url(gateway, f"/{upload['uploadId']}/complete", key=upload["key"])
    etag = '"' + "0" * 32 + '"'
    parts = [{"ETag": etag, "PartNumber": n} for n in range(1, 10_001)]  # ~500 KB, what Uppy sends for 10,000
    status, error = await call(gateway, "POST", url, "alice", {"parts": parts})
    assert_error(status, error, 409, "part_not_visible")  # read and parsed whole: S3 holds none of them
    status, error = await call(gateway, "POST", url, "alice", {"parts": parts, "pad": "x" * (1024 * 1024)})
    assert_error(status, error, 413, "request_too_large")


async def test_routes_serve_an_upload_created_on_files_and_refuse_an_incomplete_complete(
        gateway: Gateway, db: Connection, s3: Any) -> None:
    """The routes work on any upload of the owner (its key from the row); the parts a complete names
    must make the whole upload when its length is already known."""
    data = os.urandom(PART + 5)
    location = await gateway.create(len(data), **{"Upload-Part-Size": str(PART)})
    uid = location.rsplit("/", 1)[-1]
    row = await upload_row(db, uid)
    upload = {"uploadId": uid, "key": row["s3_key"], "bucket": row["bucket"]}
    first = await sign_and_put(gateway, upload, 1, data[:PART])
    url = s3_url(gateway, f"/{uid}/complete", key=upload["key"])
    status, error = await call(gateway, "POST", url, "alice", {"parts": [{"PartNumber": 1, "ETag": first}]})
    assert_error(status, error, 409, "length_conflict")
    second = await sign_and_put(gateway, upload, 2, data[PART:])
    status, body = await call(gateway, "POST", url, "alice", {"parts": [{"PartNumber": 1, "ETag": first},
                                                                          {"PartNumber": 2, "ETag": second}]})
    assert status == 200 and body["location"] == location
    assert await stored_sha256(db, s3, uid) == hashlib.sha256(data).hexdigest()


async def test_abort_shape_and_effect(gateway: Gateway, db: Connection, s3: Any) -> None:
    upload = await created(gateway)
    await sign_and_put(gateway, upload, 1, os.urandom(PART))
    url = s3_url(gateway, f"/{upload['uploadId']}", key=upload["key"])
    assert await call(gateway, "DELETE", url) == (200, {})
    assert (await upload_row(db, upload["uploadId"]))["state"] == "terminated"
    uploads = await asyncio.to_thread(s3.list_multipart_uploads, Bucket=upload["bucket"], Prefix=upload["key"])
    assert uploads.get("Uploads", []) == []
    assert await call(gateway, "DELETE", url) == (200, {})  # repeated
    status, body = await call(gateway, "GET", s3_url(gateway, f"/{upload['uploadId']}/1", key=upload["key"]))
    assert_error(status, body, 410, "gone")


async def test_abort_never_deletes_a_finished_upload(gateway: Gateway, s3: Any) -> None:
    upload = await created(gateway)
    etag = await sign_and_put(gateway, upload, 1, b"done")
    status, _ = await call(gateway, "POST", s3_url(gateway, f"/{upload['uploadId']}/complete", key=upload["key"]),
                           "alice", {"parts": [{"PartNumber": 1, "ETag": etag}]})
    assert status == 200
    status, body = await call(gateway, "DELETE", s3_url(gateway, f"/{upload['uploadId']}", key=upload["key"]))
    assert_error(status, body, 409, "upload_completed")
    head = await asyncio.to_thread(s3.head_object, Bucket=upload["bucket"], Key=upload["key"])
    assert head["ContentLength"] == 4


async def test_empty_file_completes_as_an_empty_object(gateway: Gateway, db: Connection, s3: Any) -> None:
    """Uppy sends a 0-byte file as one empty part; S3 refuses such a multipart upload, so the gateway
    stores an empty object instead and aborts the multipart upload."""
    upload = await created(gateway)
    etag = await sign_and_put(gateway, upload, 1, b"")
    status, body = await call(gateway, "POST", s3_url(gateway, f"/{upload['uploadId']}/complete", key=upload["key"]),
                              "alice", {"parts": [{"PartNumber": 1, "ETag": etag}]})
    assert status == 200, body
    row = await upload_row(db, upload["uploadId"])
    assert row is not None and row["state"] == "completed" and row["length"] == 0
    head = await asyncio.to_thread(s3.head_object, Bucket=upload["bucket"], Key=upload["key"])
    assert head["ContentLength"] == 0 and head["Metadata"]["upload-id"] == upload["uploadId"]


def every_route(gw: Gateway, upload: dict[str, str], key: str | None) -> list[tuple[str, str, Any]]:
    q = {} if key is None else {"key": key}
    uid = upload["uploadId"]
    return [
        ("GET", s3_url(gw, f"/{uid}", **q), None),
        ("GET", s3_url(gw, f"/{uid}/1", **q), None),
        ("GET", s3_url(gw, f"/{uid}/batch", **q, partNumbers="1,2"), None),
        ("POST", s3_url(gw, f"/{uid}/complete", **q), {"parts": [{"PartNumber": 1, "ETag": "x"}]}),
        ("DELETE", s3_url(gw, f"/{uid}", **q), None),
    ]


async def test_wrong_or_missing_key_is_400(gateway: Gateway, db: Connection) -> None:
    upload = await created(gateway)
    other = await created(gateway)
    for key in (None, "", other["key"], upload["key"] + "x"):
        for method, url, body in every_route(gateway, upload, key):
            status, error = await call(gateway, method, url, "alice", body)
            assert_error(status, error, 400, "invalid_request")
    assert (await upload_row(db, upload["uploadId"]))["state"] == "active"


async def test_another_owners_upload_is_404(gateway: Gateway, db: Connection) -> None:
    upload = await created(gateway, subject="alice")
    for key in (upload["key"], "anything"):
        for method, url, body in every_route(gateway, upload, key):
            status, error = await call(gateway, method, url, "mallory", body)
            assert_error(status, error, 404, "not_found")
    missing = {"uploadId": "00" + "A" * 22, "key": upload["key"]}
    for method, url, body in every_route(gateway, missing, missing["key"]):
        status, error = await call(gateway, method, url, "alice", body)
        assert_error(status, error, 404, "not_found")
    assert (await upload_row(db, upload["uploadId"]))["state"] == "active"


async def test_no_token_is_401(gateway: Gateway) -> None:
    upload = await created(gateway)
    routes = [("POST", s3_url(gateway), {"filename": "a", "type": ""}), *every_route(gateway, upload, upload["key"])]
    for method, url, body in routes:
        status, error = await call(gateway, method, url, None, body)
        assert_error(status, error, 401, "unauthorized")
        status, error = await call(gateway, method, url, None, body, Authorization="Bearer not-a-jwt")
        assert_error(status, error, 401, "unauthorized")


async def test_cors_preflight_on_every_route(gateway: Gateway) -> None:
    upload = await created(gateway)
    origin = gateway.settings.cors_origins[0]
    routes = [("POST", s3_url(gateway)), *[(m, u) for m, u, _ in every_route(gateway, upload, upload["key"])]]
    for method, url in routes:
        headers = {"Origin": origin, "Access-Control-Request-Method": method,
                   "Access-Control-Request-Headers": "authorization,content-type"}
        async with gateway.http.options(url, headers=headers) as response:
            assert response.status == 204, (method, url)
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert method in response.headers["Access-Control-Allow-Methods"]
            allowed = response.headers["Access-Control-Allow-Headers"].lower()
            assert "authorization" in allowed and "content-type" in allowed
    status, _body = await call(gateway, "GET", s3_url(gateway, f"/{upload['uploadId']}", key=upload["key"]),
                               Origin=origin)
    assert status == 200


async def test_single_request_uploads_and_sts_are_refused(gateway: Gateway) -> None:
    for path in ("/s3/params?filename=a.txt&type=text/plain", "/s3/sts"):
        status, body = await call(gateway, "GET", gateway.url + path)
        assert_error(status, body, 400, "invalid_request")
    status, body = await call(gateway, "GET", gateway.url + "/s3/params?filename=a.txt")
    assert "shouldUseMultipart: true" in body["error"]["message"]
