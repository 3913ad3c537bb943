"""Settings parse once from GATEWAY_* variables; a bad value names its variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, known_env_names, load_settings

SECRET = "s" * 40
BASE = {"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_JWT_AUDIENCE": "api"}


def test_defaults_and_units() -> None:
    settings = load_settings({**BASE, "GATEWAY_PART_SIZE": "32MiB", "GATEWAY_UPLOAD_TTL": "2h",
                              "GATEWAY_PRESIGN_TTL": "30m", "GATEWAY_CORS_ORIGINS": "https://a.example, https://b.example",
                              "GATEWAY_S3_ENDPOINT_URL": "http://s3:8333/",
                              "GATEWAY_S3_PUBLIC_ENDPOINT_URL": "http://localhost:8333"})
    assert settings.part_size == 32 * 1024 * 1024
    assert settings.upload_ttl == 7200 and settings.presign_ttl == 1800
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.s3_endpoint_url == "http://s3:8333"
    assert settings.presign_endpoint_url == "http://localhost:8333"
    assert settings.base_path == "/files" and settings.auth == "jwt"


@pytest.mark.parametrize(("env", "variable"), [
    ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
    ({"GATEWAY_PART_SIZE": "1MiB"}, "GATEWAY_PART_SIZE"),
    ({"GATEWAY_MAX_UPLOAD_SIZE": "lots"}, "GATEWAY_MAX_UPLOAD_SIZE"),
    ({"GATEWAY_UPLOAD_TTL": "soon"}, "GATEWAY_UPLOAD_TTL"),
    ({"GATEWAY_S3_ENDPOINT_URL": "s3.local"}, "GATEWAY_S3_ENDPOINT_URL"),
    ({"GATEWAY_AUTH": "maybe"}, "GATEWAY_AUTH"),
    ({"GATEWAY_JWT_SECRET": "short"}, "GATEWAY_JWT_SECRET"),
    ({"GATEWAY_JWT_AUDIENCE": ""}, "GATEWAY_JWT_AUDIENCE"),
    ({"GATEWAY_JWT_PUBLIC_KEY": "/nonexistent.pem"}, "GATEWAY_JWT_PUBLIC_KEY"),
    ({"GATEWAY_PRESIGN_TTL": "30d"}, "GATEWAY_PRESIGN_TTL"),
    ({"GATEWAY_PARTSIZE": "5MiB"}, "GATEWAY_PARTSIZE"),
])
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({**BASE, **env})


def test_auth_none_must_be_explicit() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_JWT_SECRET"):
        load_settings({})
    assert load_settings({"GATEWAY_AUTH": "none"}).auth == "none"


def test_serve_requires_database_and_s3() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_DATABASE_URL"):
        load_settings(BASE).require_services()


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    documented = set(re.findall(r"`(GATEWAY_[A-Z0-9_]+)`", readme))
    assert known_env_names() <= documented
