"""What S3 really holds: an object's bytes, and the sha256 of a completed upload's object."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from tests.support.db import upload_row
from tests.support.gateway import upload_id


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


async def stored_sha256(db: Any, s3: Any, location: str, *, wait: float = 0) -> str:
    """sha256 of the object of a completed upload (`location`: its URL or id), read back from S3.

    With `wait`, an upload still completing (after a kill, say) gets that many seconds to finish."""
    deadline = time.monotonic() + wait
    while True:
        row = await upload_row(db, upload_id(location))
        if (row is not None and row["state"] == "completed") or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    assert row is not None, f"no upload row for {location}"
    assert row["state"] == "completed", row["state"]
    data = await asyncio.to_thread(stored_bytes, s3, row["bucket"], row["s3_key"])
    return sha256(data)
