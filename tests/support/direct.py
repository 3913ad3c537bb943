"""Helpers for tests of the direct path: sign, PUT straight to S3, confirm."""

from __future__ import annotations

from typing import Any

from yarl import URL

from tests.support.gateway import Gateway
from tests.support.tokens import auth


async def sign(gw: Gateway, location: str, parts: list[Any], subject: str = "alice",
               **extra: Any) -> tuple[int, dict[str, Any]]:
    async with gw.http.post(f"{location}/parts", json={"parts": parts, **extra}, headers=auth(subject)) as response:
        return response.status, await response.json()


async def sign_ok(gw: Gateway, location: str, parts: list[Any], **extra: Any) -> dict[int, dict[str, Any]]:
    status, body = await sign(gw, location, parts, **extra)
    assert status == 200, body
    return {p["number"]: p for p in body["parts"]}


async def put_part(gw: Gateway, part: dict[str, Any], data: bytes, **headers: str) -> int:
    # encoded=True: the URL is already percent-encoded exactly as signed.
    async with gw.http.put(URL(part["url"], encoded=True), data=data,
                           headers={**part["headers"], **headers}) as response:
        await response.read()
        return response.status


async def confirm(gw: Gateway, location: str, number: int, subject: str = "alice") -> tuple[int, str | None]:
    async with gw.http.put(f"{location}/parts/{number}", headers=auth(subject)) as response:
        await response.read()
        return response.status, response.headers.get("Upload-Offset")


async def offset(gw: Gateway, location: str) -> int:
    async with gw.http.head(location, headers=auth()) as response:
        assert response.status == 200
        return int(response.headers["Upload-Offset"])


async def upload_direct(gw: Gateway, location: str, data: bytes, part_size: int) -> None:
    count = max(1, -(-len(data) // part_size))
    signed = await sign_ok(gw, location, list(range(1, count + 1)))
    for number, part in signed.items():
        chunk = data[part["offset"]:part["offset"] + part["length"]]
        assert await put_part(gw, part, chunk) == 200
        status, _ = await confirm(gw, location, number)
        assert status == 204
