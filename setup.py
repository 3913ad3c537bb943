"""Only what pyproject.toml cannot express: package discovery (as `[tool.setuptools.packages.find]` did) plus two
directories mapped into the package.

`migrations/` and `clients/js/` stay at the repository top level (they are edited, reviewed and published as
themselves) but are installed as the data packages gateway/_data/migrations and gateway/_data/clients/js, so a
regular (non-editable) install has them. Their file patterns are in pyproject.toml's package-data. At run time
gateway._data.data_path() finds them, in a wheel or in a source checkout / editable install.
"""

from setuptools import find_namespace_packages, setup

DATA_DIRS = {
    "gateway._data.migrations": "migrations",
    "gateway._data.clients.js": "clients/js",
}

setup(
    packages=[*find_namespace_packages(include=["gateway", "gateway.*"], exclude=["*.__pycache__"]), *DATA_DIRS],
    package_dir=DATA_DIRS,
)
