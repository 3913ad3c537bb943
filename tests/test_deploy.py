"""Static checks of the container deployment: Dockerfile, docker-compose.yml and deploy/.

Nothing here needs a Docker engine. The compose file is parsed with PyYAML and its `${VAR...}`
interpolations are resolved the way Compose does; the gateway's settings are then built from the
resulting environment with the real `gateway.config.load_settings`, so a renamed or mistyped
GATEWAY_* variable, or a value the gateway would reject at start-up, fails here. When the Compose v2
CLI plugin is installed (`docker compose version` works; it needs no engine), `docker compose config`
is run as well.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import Settings, known_env_names, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"

SERVICES = {"postgres", "s3", "bucket", "migrate", "gateway"}
DUMMY_SECRET = "d" * 40  # stands in for every required ${VAR:?...} variable
DAY = 86400


# --- Compose interpolation -------------------------------------------------------------------------

class InterpolationError(ValueError):
    pass


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Resolve `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
    `${VAR?error}`, `${VAR:+alt}` and `${VAR+alt}` like Compose (no nesting)."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        present = value is not None
        non_empty = bool(value)
        if op in (":-", "-"):
            return value if (non_empty if op == ":-" else present) else arg  # type: ignore[return-value]
        if op in (":?", "?"):
            if not (non_empty if op == ":?" else present):
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return arg if (non_empty if op == ":+" else present) else ""
        return value or ""

    result = _VARIABLE.sub(replace, text)
    if "${" in result.replace("$$", ""):
        raise InterpolationError(f"unsupported interpolation in {text!r}")
    return result


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Compose interpolates every string value (not keys) of the file."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def required_variables(text: str) -> set[str]:
    return {m.group("braced") for m in _VARIABLE.finditer(text) if (m.group("op") or "").endswith("?")}


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment:` as a dict, from either the mapping or the list form."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in raw)
        raw = dict(pairs)
    return {str(k): ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for k, v in raw.items()}


# --- Fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def raw_compose(compose_text: str) -> dict[str, Any]:
    document = yaml.safe_load(compose_text)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def host_env(compose_text: str) -> dict[str, str]:
    """What `docker compose up` would see: no overrides, dummies for the required variables."""
    return {name: DUMMY_SECRET for name in required_variables(compose_text)}


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any], host_env: dict[str, str]) -> dict[str, Any]:
    return interpolate_tree(raw_compose, host_env)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def gateway_env(services: dict[str, Any]) -> dict[str, str]:
    return environment_of(services["gateway"])


@pytest.fixture(scope="module")
def gateway_settings(gateway_env: dict[str, str]) -> Settings:
    return load_settings(gateway_env)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each Dockerfile instruction, continuation lines joined."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def load_json(name: str) -> Any:
    return json.loads((DEPLOY / name).read_text())


# --- The interpolation helper itself ----------------------------------------------------------------

def test_interpolation_helper() -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate("a $$SET b", env) == "a $SET b"
    assert interpolate("${SET} $SET", env) == "value value"
    assert interpolate("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env) == "d d  d"
    assert interpolate("${SET:?boom}", env) == "value"
    assert interpolate("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}", env) == "alt||alt"
    with pytest.raises(InterpolationError, match="boom"):
        interpolate("${UNSET:?boom}", env)
    with pytest.raises(InterpolationError):
        interpolate("${EMPTY:?boom}", env)
    assert required_variables("${A:?x} ${B?y} ${C:-z}") == {"A", "B"}


# --- docker-compose.yml -----------------------------------------------------------------------------

def test_compose_has_the_services(raw_compose: dict[str, Any]) -> None:
    assert set(raw_compose["services"]) >= SERVICES


def test_every_gateway_variable_is_known(services: dict[str, Any]) -> None:
    known = known_env_names()
    for name, service in services.items():
        unknown = {k for k in environment_of(service) if k.startswith("GATEWAY_")} - known
        assert not unknown, f"service {name} sets unknown settings {sorted(unknown)}"


def test_jwt_secret_is_required(raw_compose: dict[str, Any], compose_text: str) -> None:
    raw_env = raw_compose["services"]["gateway"]["environment"]
    assert re.fullmatch(r"\$\{GATEWAY_JWT_SECRET:\?[^}]+\}", raw_env["GATEWAY_JWT_SECRET"])
    with pytest.raises(InterpolationError, match="GATEWAY_JWT_SECRET"):
        interpolate_tree(raw_compose, {})
    # A real secret given on the host is passed through unchanged.
    secret = "s" * 48
    env = environment_of(interpolate_tree(raw_compose, {"GATEWAY_JWT_SECRET": secret})["services"]["gateway"])
    assert env["GATEWAY_JWT_SECRET"] == secret


def test_gateway_settings_load(gateway_settings: Settings, gateway_env: dict[str, str]) -> None:
    gateway_settings.require_services()  # what `gateway serve` checks first
    assert gateway_settings.host == "0.0.0.0"
    assert gateway_settings.auth == "jwt" and gateway_settings.jwt_audience
    assert gateway_settings.jwt_secret == DUMMY_SECRET
    assert gateway_settings.public_url == "http://localhost:8080"
    assert gateway_settings.cors_origins
    assert gateway_env["GATEWAY_DATABASE_URL"].startswith("postgresql://")


def test_internal_and_public_s3_endpoints(gateway_settings: Settings, services: dict[str, Any]) -> None:
    internal = urlsplit(gateway_settings.s3_endpoint_url)
    public = urlsplit(gateway_settings.presign_endpoint_url)
    assert gateway_settings.s3_endpoint_url == "http://s3:8333"
    assert gateway_settings.presign_endpoint_url == "http://localhost:8333"
    # The internal endpoint is the S3 service on the compose network; the public one its published port.
    assert internal.hostname in services and internal.hostname == "s3"
    assert f"{public.port}:{internal.port}" in [str(p) for p in services["s3"]["ports"]]


def test_database_url_points_at_the_postgres_service(services: dict[str, Any], gateway_env: dict[str, str]) -> None:
    url = urlsplit(gateway_env["GATEWAY_DATABASE_URL"])
    pg_env = environment_of(services["postgres"])
    assert url.hostname == "postgres" and url.port == 5432
    assert url.username == pg_env["POSTGRES_USER"] and url.password == pg_env["POSTGRES_PASSWORD"]
    assert url.path == "/" + pg_env["POSTGRES_DB"]
    assert environment_of(services["migrate"])["GATEWAY_DATABASE_URL"] == gateway_env["GATEWAY_DATABASE_URL"]


def test_postgres(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:17")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def _command(service: Mapping[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_migrate_runs_gateway_migrate(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert _command(migrate) == ["gateway", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"
    assert migrate["image"] == services["gateway"]["image"]
    assert migrate["build"] == services["gateway"]["build"]


def test_gateway_service(services: dict[str, Any], gateway_settings: Settings) -> None:
    gateway = services["gateway"]
    assert _command(gateway) == ["gateway", "serve"]
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert gateway["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
    assert f"{gateway_settings.port}:{gateway_settings.port}" in [str(p) for p in gateway["ports"]]
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert Path(ROOT, gateway["build"]["context"], gateway["build"]["dockerfile"]).resolve() == DOCKERFILE


def test_s3_service(services: dict[str, Any], gateway_settings: Settings) -> None:
    s3 = services["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs:")
    command = _command(s3)
    assert command[0] in ("server", "mini") and "-s3.port=8333" in command
    config_path = next(arg.split("=", 1)[1] for arg in command if arg.startswith("-s3.config="))
    mounts = {target: source for source, target, *_ in (v.split(":") for v in s3["volumes"])}
    assert (ROOT / mounts[config_path]).resolve() == DEPLOY / "seaweedfs-s3.json"
    assert "/healthz" in " ".join(s3["healthcheck"]["test"])
    # The gateway's keys are an identity of the S3 server, allowed to read and write.
    identities = {
        (cred["accessKey"], cred["secretKey"]): identity["actions"]
        for identity in load_json("seaweedfs-s3.json")["identities"] for cred in identity["credentials"]
    }
    actions = identities[(gateway_settings.s3_access_key_id, gateway_settings.s3_secret_access_key)]
    assert {"Read", "Write", "List"} <= set(actions) or "Admin" in actions


def test_bucket_service(services: dict[str, Any], gateway_settings: Settings) -> None:
    bucket = services["bucket"]
    env = environment_of(bucket)
    assert bucket["depends_on"]["s3"]["condition"] == "service_healthy"
    assert env["BUCKET"] == gateway_settings.s3_bucket
    assert env["AWS_ENDPOINT_URL"] == gateway_settings.s3_endpoint_url  # the internal endpoint
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        gateway_settings.s3_access_key_id, gateway_settings.s3_secret_access_key)
    assert env["AWS_DEFAULT_REGION"] == gateway_settings.s3_region
    assert "./deploy:/deploy:ro" in bucket["volumes"]


def _fake_aws(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    aws = bin_dir / "aws"
    aws.write_text(
        '#!/bin/sh\n'
        'echo "$*" >> "$AWS_LOG"\n'
        'if [ "$1 $2" = "s3api head-bucket" ]; then exit "$HEAD_BUCKET_STATUS"; fi\n'
        'exit 0\n'
    )
    aws.chmod(aws.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


@pytest.mark.parametrize("bucket_exists", [False, True])
def test_bucket_script(services: dict[str, Any], tmp_path: Path, bucket_exists: bool) -> None:
    """Run the bucket service's script with a stand-in `aws` that records its calls."""
    bucket = services["bucket"]
    entrypoint = bucket["entrypoint"]
    assert entrypoint[0] == "/bin/sh"
    bin_dir = _fake_aws(tmp_path)
    log = tmp_path / "aws.log"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "AWS_LOG": str(log), "HEAD_BUCKET_STATUS": "0" if bucket_exists else "254",
        **environment_of(bucket),
    }
    result = subprocess.run(["/bin/sh", *entrypoint[1:], *_command(bucket)], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    name = environment_of(bucket)["BUCKET"]
    assert any(c.startswith(f"s3api head-bucket --bucket {name}") for c in calls)
    assert any(c.startswith(f"s3api create-bucket --bucket {name}") for c in calls) is not bucket_exists
    applied = {}
    for call in calls:
        words = call.split()
        if words[:2] in (["s3api", "put-bucket-cors"], ["s3api", "put-bucket-lifecycle-configuration"]):
            assert words[words.index("--bucket") + 1] == name
            applied[words[1]] = next(w for w in words if w.startswith("file://"))
    assert set(applied) == {"put-bucket-cors", "put-bucket-lifecycle-configuration"}
    for uri in applied.values():  # /deploy in the container is ./deploy here
        path = uri.removeprefix("file://")
        assert path.startswith("/deploy/")
        json.loads((DEPLOY / path.removeprefix("/deploy/")).read_text())


def test_healthcheck_probe_matches_the_image(services: dict[str, Any], dockerfile: list[tuple[str, str]]) -> None:
    image_probe = json.loads(next(args for kw, args in dockerfile if kw == "HEALTHCHECK").split(" CMD ", 1)[1])
    assert services["gateway"]["healthcheck"]["test"] == ["CMD", *image_probe]


# --- Dockerfile -------------------------------------------------------------------------------------

def test_dockerfile(dockerfile: list[tuple[str, str]]) -> None:
    keywords = [kw for kw, _ in dockerfile]
    assert dockerfile[keywords.index("FROM")][1] == "python:3.11-slim"
    assert json.loads(dockerfile[len(keywords) - 1 - keywords[::-1].index("CMD")][1]) == ["gateway", "serve"]
    # A regular install: the wheel carries migrations/ and clients/js/ (tests/test_packaging.py).
    installs = [args for kw, args in dockerfile if kw == "RUN" and "pip install" in args]
    assert installs and not any(re.search(r"pip install\s+(-e|--editable)\b", args) for args in installs)
    assert any(kw == "EXPOSE" and "8080" in args.split() for kw, args in dockerfile)
    user = [args for kw, args in dockerfile if kw == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    # USER comes after the install (which needs root) and before CMD.
    assert keywords.index("RUN") < len(keywords) - 1 - keywords[::-1].index("USER") < keywords.index("CMD")
    env_text = " ".join(args for kw, args in dockerfile if kw == "ENV")
    assert re.search(r"\bGATEWAY_HOST=0\.0\.0\.0\b", env_text)
    healthcheck = next(args for kw, args in dockerfile if kw == "HEALTHCHECK")
    assert "/healthz" in healthcheck


def test_dockerfile_env_names_are_known(dockerfile: list[tuple[str, str]]) -> None:
    env_text = " ".join(args for kw, args in dockerfile if kw == "ENV")
    names = set(re.findall(r"\b(GATEWAY_[A-Z0-9_]+)=", env_text))
    assert names and names <= known_env_names()


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [200, 503])
def test_image_healthcheck_probe(dockerfile: list[tuple[str, str]], health_server: HTTPServer, status: int,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The HEALTHCHECK command itself: exit 0 on a healthy /healthz, non-zero otherwise."""
    probe = json.loads(next(args for kw, args in dockerfile if kw == "HEALTHCHECK").split(" CMD ", 1)[1])
    assert probe[0] == "python"
    monkeypatch.setattr(_Health, "status", status)
    env = {**os.environ, "GATEWAY_PORT": str(health_server.server_address[1])}
    result = subprocess.run([sys.executable, *probe[1:]], env=env, capture_output=True, timeout=30)
    assert (result.returncode == 0) is (status == 200)


def test_image_healthcheck_probe_fails_when_nothing_listens(dockerfile: list[tuple[str, str]]) -> None:
    probe = json.loads(next(args for kw, args in dockerfile if kw == "HEALTHCHECK").split(" CMD ", 1)[1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run([sys.executable, *probe[1:]], env={**os.environ, "GATEWAY_PORT": str(port)},
                            capture_output=True, timeout=30)
    assert result.returncode != 0


def test_dockerignore() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for required in (".venv", ".git", ".dev-data", "test-output"):
        assert required in patterns or f"**/{required}" in patterns, required
    # Unanchored names only match at the context root; nested ones need **/.
    for nested in ("__pycache__", "node_modules"):
        assert f"**/{nested}" in patterns, nested
    # What the image needs must not be ignored.
    for needed in ("gateway", "migrations", "clients", "pyproject.toml", "setup.py", "README.md"):
        assert needed not in patterns


# --- deploy/ ----------------------------------------------------------------------------------------

def test_deploy_json_files_parse() -> None:
    files = sorted(DEPLOY.glob("*.json"))
    assert {f.name for f in files} >= {"bucket-cors.json", "bucket-lifecycle.json", "seaweedfs-s3.json"}
    for path in files:
        json.loads(path.read_text())


def test_bucket_cors_allows_direct_part_uploads(gateway_settings: Settings) -> None:
    rules = load_json("bucket-cors.json")["CORSRules"]
    assert any("PUT" in r["AllowedMethods"] and "ETag" in r.get("ExposeHeaders", []) for r in rules)
    origins = {o for r in rules for o in r["AllowedOrigins"]}
    assert "*" in origins or set(gateway_settings.cors_origins) <= origins


def _rules(action: str) -> list[dict[str, Any]]:
    rules = [r for r in load_json("bucket-lifecycle.json")["Rules"] if action in r]
    assert rules and all(r["Status"] == "Enabled" for r in rules)
    return rules


def _max_age(gateway_settings: Settings) -> int:
    """The longest an upload can live: the default, or what the compose file configures."""
    return max(Settings().upload_max_age, gateway_settings.upload_max_age)


def test_lifecycle_aborts_multipart_uploads_after_the_gateway_gives_up(gateway_settings: Settings) -> None:
    for rule in _rules("AbortIncompleteMultipartUpload"):
        days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        # S3 must not abort an upload the gateway still considers alive.
        assert days * DAY > _max_age(gateway_settings)
        assert rule["Filter"].get("Prefix", "") in ("", gateway_settings.s3_key_prefix + "/")


def test_lifecycle_expires_the_stash(gateway_settings: Settings) -> None:
    stash = f"{gateway_settings.s3_key_prefix}/stash/"
    (rule,) = [r for r in _rules("Expiration") if r["Filter"].get("Prefix") == stash]
    assert rule["Expiration"]["Days"] * DAY > _max_age(gateway_settings)
    # No expiration rule may reach finished uploads: only the stash prefix.
    assert all(r["Filter"].get("Prefix", "").startswith(stash) for r in _rules("Expiration"))


def test_nginx_example() -> None:
    text = (DEPLOY / "nginx.conf.example").read_text()
    for directive in (r"proxy_request_buffering\s+off;", r"client_max_body_size\s+0;", r"proxy_read_timeout\s+\S+;",
                      r"client_body_timeout\s+\S+;", r"proxy_set_header\s+X-Forwarded-Proto\s+\S+;",
                      r"proxy_set_header\s+X-Forwarded-For\s+\S+;", r"proxy_set_header\s+Host\s+\S+;"):
        assert re.search(directive, text), directive
    assert text.count("{") == text.count("}")


# --- docker compose config, when the Compose plugin is installed ------------------------------------

def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        result = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [docker, "compose"] if result.returncode == 0 else None


def _host_env_without_gateway() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "POSTGRES_"))}


@pytest.mark.skipif(_compose_cli() is None, reason="the docker compose plugin is not installed")
def test_docker_compose_config(gateway_env: dict[str, str]) -> None:
    cli = _compose_cli()
    assert cli is not None
    env = {**_host_env_without_gateway(), "GATEWAY_JWT_SECRET": DUMMY_SECRET}
    result = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "config"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) >= SERVICES
    assert environment_of(resolved["services"]["gateway"]) == gateway_env
    if not (ROOT / ".env").exists():  # a .env file could supply the secret
        missing = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=ROOT,
                                 env=_host_env_without_gateway(), capture_output=True, text=True, timeout=120)
        assert missing.returncode != 0 and "GATEWAY_JWT_SECRET" in missing.stderr
