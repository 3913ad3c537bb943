"""Unit tests of the core over the in-memory adapters (tests/support/memory.py): no Postgres, no S3.

tests/conftest.py only starts services for tests that ask for its `stack` fixture (directly or via
`gateway`, `db`, `s3`); here `stack` is overridden so that a unit test asking for it fails at once
instead of starting Postgres and SeaweedFS.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.core import listing
from tests.support.memory import World, build_world


@pytest.fixture(scope="session")
def stack() -> Iterator[None]:
    pytest.fail("unit tests run without Postgres and S3: use the memory adapters (tests/support/memory.py)")
    yield


@pytest.fixture(autouse=True)
def no_listing_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    """ListParts retries for late-listing stores wait 2 s in all; the memory store needs no wall time."""
    monkeypatch.setattr(listing, "LISTING_RETRY_DELAYS", (0.0, 0.0, 0.0))


@pytest.fixture
def world() -> World:
    return build_world()
