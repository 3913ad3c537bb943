"""The wheel is self-contained: migrations/ and clients/js/ ship in it as package data (gateway/_data).

The Dockerfile does a regular `pip install .`, so a file missing from the wheel is missing from the image.
The wheel is built from a copy of the repository (like the image's build context): an in-place build would
write build/ and *.egg-info into the working tree, and setuptools packs whatever a stale build/lib holds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gateway._data import data_path
from gateway.db.migrate import migration_files

ROOT = Path(__file__).resolve().parent.parent

# Local state that is no part of a build (cf. .dockerignore).
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "node_modules", "__pycache__",
                                     "*.py[cod]", "test-output", ".*_cache", ".hypothesis", ".dev-data")


def _pip(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *map(str, args)],
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip {' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("packaging") / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE, symlinks=True)
    return src


@pytest.fixture(scope="module")
def wheel(source: Path) -> Path:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the wheel without build isolation needs setuptools (in .[dev]: make install)")
    dist = source.parent / "dist"
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, source, cwd=source.parent)
    (built,) = dist.glob("tus_s3_gateway-*.whl")
    return built


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def test_wheel_contains_migrations_and_js_client(source: Path, wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sql = sorted(p.name for p in (source / "migrations").glob("*.sql"))
    assert sql, "no migrations/*.sql in the repository"
    missing = [f"migrations/{n}" for n in sql if f"gateway/_data/migrations/{n}" not in names]
    js = _files(source / "clients" / "js")
    assert {"index.js", "index.d.ts", "package.json"} <= set(js)
    missing += [f"clients/js/{n}" for n in js if f"gateway/_data/clients/js/{n}" not in names]
    assert not missing, f"not in {wheel.name}: {missing}"


def test_wheel_contains_every_module_and_static_file(source: Path, wheel: Path) -> None:
    """setup.py's package discovery misses no (new) subpackage, and the demo page's files ship."""
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = [p.relative_to(source).as_posix() for p in (source / "gateway").rglob("*.py")]
    static = [p.relative_to(source).as_posix() for p in (source / "gateway" / "static").rglob("*") if p.is_file()]
    assert modules and static
    assert not [n for n in modules + static if n not in names]


_PROBE = """
import json, gateway, gateway.http.demo as demo
from gateway.db.migrate import migration_files
print(json.dumps({"package": gateway.__file__, "migrations": [str(p) for p in migration_files()],
                  "clients": str(demo.CLIENT_DIR), "client_files": sorted(p.name for p in demo.CLIENT_DIR.iterdir())}))
"""


def test_installed_wheel_reads_its_own_data(source: Path, wheel: Path, tmp_path: Path) -> None:
    """A regular install (not the working tree) finds every migration and the JS client inside itself."""
    target = tmp_path / "site"
    _pip("install", "--no-deps", "--no-index", "-q", "--target", target, wheel, cwd=tmp_path)
    # The dependencies come from this interpreter's site-packages; gateway must come from `target` only.
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["package"]).is_relative_to(target)
    migrations = [Path(p) for p in found["migrations"]]
    assert [p.name for p in migrations] == sorted(p.name for p in (source / "migrations").glob("*.sql"))
    assert all(p.is_relative_to(target / "gateway" / "_data" / "migrations") for p in migrations)
    assert Path(found["clients"]) == target / "gateway" / "_data" / "clients" / "js"
    assert found["client_files"] == _files(source / "clients" / "js")


def test_source_checkout_reads_the_repository_directories() -> None:
    """Editable installs and plain checkouts have no gateway/_data copies: the top-level directories are used."""
    assert data_path("migrations") == ROOT / "migrations"
    assert data_path("clients/js") == ROOT / "clients" / "js"
    assert [p.name for p in migration_files()] == sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
