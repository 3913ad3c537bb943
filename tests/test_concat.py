"""tus concatenation: partial uploads assembled into a final one inside S3."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gateway.core.concat import plan_parts
from tests.support import MiB
from tests.support.db import upload_row
from tests.support.gateway import Gateway, upload_id
from tests.support.js import run_js, tus_options
from tests.support.node import write_file
from tests.support.storage import sha256, stored_bytes, stored_sha256
from tests.support.tokens import auth

# tests/js/node_modules (tus-js-client's parallelUploads below), installed for the whole module.
pytestmark = pytest.mark.usefixtures("js_packages")

OCTETS = {"Content-Type": "application/offset+octet-stream"}


async def partial(gw: Gateway, data: bytes, subject: str = "alice", finish: bool = True) -> str:
    location = await gw.create(len(data), subject, **{"Upload-Concat": "partial"})
    if finish and data:
        async with gw.http.patch(location, data=data, headers={**auth(subject), **OCTETS,
                                                                "Upload-Offset": "0"}) as response:
            assert response.status == 204
    return location


async def final(gw: Gateway, locations: list[str], subject: str = "alice", **headers: str):  # type: ignore[no-untyped-def]
    return gw.http.post(gw.files(), headers={**auth(subject), "Upload-Concat": "final;" + " ".join(locations),
                                             **headers})


def test_plan_keeps_every_part_but_the_last_at_least_5_mib() -> None:
    sizes = [3 * MiB, 7 * MiB, 1024, 6 * MiB, 100, 12 * MiB, 2 * MiB]
    plan = plan_parts([(f"k{i}", size) for i, size in enumerate(sizes)])
    assert sum(p.size for p in plan) == sum(sizes)
    assert all(p.size >= 5 * MiB for p in plan[:-1])
    assert [p.number for p in plan] == list(range(1, len(plan) + 1))
    # Large ranges are copied inside S3; what passes through the gateway is at most 5 MiB per part.
    assert any(p.copy for p in plan)
    assert all(p.copy == (len(p.pieces) == 1 and p.size >= 5 * MiB) or not p.copy for p in plan)
    assert all(p.size <= 5 * MiB for p in plan if not p.copy)
    # The pieces, in order, are exactly the sources.
    flat = [(piece.key, piece.start, piece.end) for p in plan for piece in p.pieces]
    rebuilt: dict[str, int] = {}
    for key, start, end in flat:
        assert start == rebuilt.get(key, 0)
        rebuilt[key] = end
    assert rebuilt == {f"k{i}": size for i, size in enumerate(sizes) if size}


async def test_final_upload_assembled_in_s3(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    pieces = [os.urandom(n) for n in (3 * MiB, 7 * MiB, 1024, 6 * MiB)]
    locations = [await partial(gateway, piece) for piece in pieces]
    async with await final(gateway, locations, **{"Upload-Metadata": "filename YWxsLmJpbg=="}) as response:
        assert response.status == 201
        location = response.headers["Location"]
    row = await upload_row(db, upload_id(location))
    assert row["state"] == "completed" and row["concat"] == "final" and row["length"] == sum(map(len, pieces))
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(b"".join(pieces))
    async with gateway.http.head(location, headers=auth()) as response:
        assert response.headers["Upload-Concat"] == "final;" + " ".join(locations)
        assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(row["length"])
    async with gateway.http.head(locations[0], headers=auth()) as response:
        assert response.headers["Upload-Concat"] == "partial"
    async with gateway.http.patch(location, data=b"x", headers={**auth(), **OCTETS,
                                                                 "Upload-Offset": str(row["length"])}) as r:
        assert r.status == 403 and (await r.json())["error"]["code"] == "modify_final"


async def test_relative_urls_and_repeated_partials(gateway: Gateway, db, s3) -> None:  # type: ignore[no-untyped-def]
    piece = os.urandom(2 * MiB)
    location = await partial(gateway, piece)
    relative = "/files/" + upload_id(location)
    async with await final(gateway, [relative, location, relative]) as response:
        assert response.status == 201
        final_location = response.headers["Location"]
    row = await upload_row(db, upload_id(final_location))
    assert sha256(stored_bytes(s3, row["bucket"], row["s3_key"])) == sha256(piece * 3)


@pytest.mark.parametrize("case", ["unfinished", "other_owner", "not_partial", "garbage_url", "with_length"])
async def test_bad_finals(gateway: Gateway, db, case: str) -> None:  # type: ignore[no-untyped-def]
    good = await partial(gateway, os.urandom(1000))
    extra: dict[str, str] = {}
    if case == "unfinished":
        other = await partial(gateway, os.urandom(1000), finish=False)
    elif case == "other_owner":
        other = await partial(gateway, os.urandom(1000), subject="mallory")
    elif case == "not_partial":
        other = await gateway.create(0)
    elif case == "garbage_url":
        other = "https://elsewhere.example/x/y"
    else:
        other, extra = good, {"Upload-Length": "2000"}
    before = await db.fetchval("select count(*) from uploads")
    async with await final(gateway, [good, other], **extra) as response:
        assert response.status == 400
        code = (await response.json())["error"]["code"]
    assert code == ("upload_not_finished" if case == "unfinished" else "invalid_concat")
    assert await db.fetchval("select count(*) from uploads") == before


async def test_tus_js_client_parallel_uploads(gateway: Gateway, db, s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "parallel.bin"
    digest = write_file(path, 23 * MiB + 11)
    result = await run_js("tus_upload.mjs", tus_options(gateway, path, parallelUploads=4))
    finals = [r for r in result["requests"] if r["method"] == "POST" and
              r["headers"].get("Upload-Concat", "").startswith("final;")]
    assert len(finals) == 1 and finals[0]["status"] == 201, [(r["method"], r["headers"]) for r in result["requests"]]
    assert await stored_sha256(db, s3, result["url"]) == digest
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
