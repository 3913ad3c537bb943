"""Stock tus clients against the gateway."""

from __future__ import annotations

import asyncio
import io

from tusclient import client as tus

from tests.support.db import upload_row
from tests.support.gateway import Gateway, upload_id
from tests.support.tokens import token


async def test_tuspy_creates_upload_and_reads_offset(gateway: Gateway, db) -> None:  # type: ignore[no-untyped-def]
    def create_and_probe() -> tuple[str, int]:
        tus_client = tus.TusClient(gateway.files(), headers={"Authorization": f"Bearer {token('tuspy-user')}"})
        uploader = tus_client.uploader(file_stream=io.BytesIO(b"hello tus" * 1000),
                                       metadata={"filename": "hello.txt"})
        uploader.set_url(uploader.create_url())
        return uploader.url, uploader.get_offset()

    url, offset = await asyncio.to_thread(create_and_probe)
    assert offset == 0
    row = await upload_row(db, upload_id(url))
    assert row["owner_sub"] == "tuspy-user" and row["length"] == 9000
    assert '"filename": "hello.txt"' in row["metadata"]
