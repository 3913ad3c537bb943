"""The scale-out soak's short version (`python -m bench.soak --quick`): three `gateway serve` behind
haproxy, a SeaweedFS cluster, kill -9s, a Postgres and a volume server restart; every object intact."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
                    reason="the soak needs Debian's haproxy (make system-deps installs it)")
def test_quick_soak_keeps_every_object_intact() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert lines[-1].startswith("soak: all 300 objects intact"), done.stdout[-6000:]
    table = done.stdout
    assert "| uploads stuck (active or completing) | 0 |" in table
    assert "| uploads with more than one `completed` event | 0 |" in table
    assert "| S3 multipart uploads without a live row (after the sweep) | 0 |" in table
