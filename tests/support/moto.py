"""moto in server mode on 127.0.0.1, for tests that need a second, real S3 (its in-process mock does not
work with aiobotocore)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from moto.server import ThreadedMotoServer

from gateway.embedded import HOST, free_port


@contextlib.contextmanager
def running_moto() -> Iterator[str]:
    """A ThreadedMotoServer on a free port, yielding its endpoint URL; stopped whatever happens."""
    port = free_port()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.stop()
