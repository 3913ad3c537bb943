"""tus `Upload-Checksum` algorithms (the checksum extension); sha1 is required by tus."""

from __future__ import annotations

import hashlib
import zlib
from typing import Protocol


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


ALGORITHMS = ("sha1", "md5", "sha256", "crc32")


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.new(algorithm)
