"""Files the gateway reads at run time that live at the repository top level: `migrations/` and `clients/js/`.

setup.py maps those directories into this package (gateway/_data/migrations, gateway/_data/clients/js), so a
wheel ships them as package data. A source checkout or an editable install has no copies here and reads the
repository's directories instead.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_REPOSITORY = Path(__file__).resolve().parent.parent.parent


def data_path(name: str) -> Path:
    """The directory `name` (e.g. "migrations", "clients/js"): the packaged copy, else the repository's."""
    packaged = files(__name__).joinpath(*name.split("/"))
    # An installed wheel is a plain directory tree, so the resource is a real path (needed by add_static).
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return _REPOSITORY / name
