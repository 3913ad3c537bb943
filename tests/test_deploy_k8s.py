"""Static checks of the Kubernetes manifests in deploy/k8s (no cluster needed), like tests/test_deploy.py
does for docker-compose: the YAML parses, every GATEWAY_* name is a real setting and the settings load,
probes hit real routes on the right ports, the grace period outlasts the drain, selectors and ports
line up. With kubectl installed, `kubectl kustomize` renders the kustomization too (offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import build_parser, migrate_command
from gateway.cli import serve as serve_command
from gateway.config import Settings, known_env_names, load_settings
from gateway.http.routes import READINESS_TIMEOUT, ops_route_table, route_table
from gateway.supervisor import SHUTDOWN_MARGIN

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SECRET_EXAMPLE = "secret.example.yaml"


def load(name: str) -> dict[str, Any]:
    (document,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return document


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """Every manifest by kind (kinds that occur twice: by kind/name)."""
    result: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        document = load(path.name)
        result[f"{document['kind']}/{document['metadata']['name']}"] = document
    return result


def one(manifests: dict[str, dict[str, Any]], kind: str, name: str = "tus-s3-gateway") -> dict[str, Any]:
    return manifests[f"{kind}/{name}"]


@pytest.fixture(scope="module")
def deployment(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return one(manifests, "Deployment")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (gateway,) = deployment["spec"]["template"]["spec"]["containers"]
    return gateway


@pytest.fixture(scope="module")
def settings(manifests: dict[str, dict[str, Any]]) -> Settings:
    """What the pod's environment (ConfigMap + Secret through envFrom) makes of the settings."""
    env = {**one(manifests, "ConfigMap")["data"], **one(manifests, "Secret")["stringData"]}
    return load_settings(env)


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def test_every_manifest_parses_and_is_in_the_kustomization(manifests: dict[str, dict[str, Any]]) -> None:
    for key, document in manifests.items():
        assert document["apiVersion"] and document["metadata"]["labels"]["app.kubernetes.io/name"], key
    kustomization = load("kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The Secret holds credentials: an example to copy, never applied with the rest.
    assert set(kustomization["resources"]) == files - {SECRET_EXAMPLE}
    kinds = {key.split("/")[0] for key in manifests}
    assert kinds >= {"Deployment", "Job", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                     "ServiceMonitor", "ConfigMap", "Secret", "ServiceAccount"}


def test_every_setting_name_is_known(manifests: dict[str, dict[str, Any]]) -> None:
    known = known_env_names()
    config, secret = one(manifests, "ConfigMap")["data"], one(manifests, "Secret")["stringData"]
    assert set(config) <= known and set(secret) <= known
    assert not set(config) & set(secret)
    assert all(isinstance(v, str) for v in config.values())  # ConfigMap values must be strings
    for key in ("Deployment/tus-s3-gateway", "Job/tus-s3-gateway-migrate"):
        for c in manifests[key]["spec"]["template"]["spec"]["containers"]:
            for entry in c.get("env", []):
                assert entry["name"] in known, entry["name"]
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "tus-s3-gateway" and ref["key"] in secret
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                assert ref["name"] == "tus-s3-gateway"


def test_settings_load(settings: Settings) -> None:
    settings.require_services()  # what `gateway serve` checks first
    assert settings.host == "0.0.0.0" and settings.auth == "jwt" and settings.jwt_audience
    assert settings.metrics_port and settings.metrics_port != settings.port
    assert settings.log_format == "json"


def test_ports_match_the_settings(manifests: dict[str, dict[str, Any]], container: dict[str, Any],
                                  settings: Settings) -> None:
    assert container_port(container, "http") == settings.port
    assert container_port(container, "metrics") == settings.metrics_port
    api = one(manifests, "Service")["spec"]["ports"]
    assert [container_port(container, p["targetPort"]) for p in api] == [settings.port]  # never the metrics port
    metrics = one(manifests, "Service", "tus-s3-gateway-metrics")["spec"]["ports"]
    assert [container_port(container, p["targetPort"]) for p in metrics] == [settings.metrics_port]
    (endpoint,) = one(manifests, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in metrics}
    assert endpoint["path"] in {r.path for r in ops_route_table() if r.method == "GET"}


def test_probes_hit_real_routes(container: dict[str, Any], settings: Settings) -> None:
    routes = {
        settings.port: {r.path for r in route_table(settings.base_path) if r.method == "GET" and not r.auth},
        settings.metrics_port: {r.path for r in ops_route_table() if r.method == "GET" and not r.auth},
    }
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["path"] in routes[container_port(container, get["port"])]
    # /readyz probes Postgres and S3 at once with READINESS_TIMEOUT each: it answers within the probe timeout.
    assert container["readinessProbe"]["timeoutSeconds"] > READINESS_TIMEOUT


def test_grace_period_outlasts_the_drain(deployment: dict[str, Any], container: dict[str, Any],
                                         settings: Settings) -> None:
    pod = deployment["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    # preStop counts against the grace period; then the supervisor waits shutdown timeout + margin.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.shutdown_timeout + SHUTDOWN_MARGIN
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout


def test_commands(manifests: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    command = container["command"]
    assert command[0] == "gateway"
    args = build_parser().parse_args(command[1:])
    assert args.func is serve_command and args.workers >= 2
    job = one(manifests, "Job", "tus-s3-gateway-migrate")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert build_parser().parse_args(migrate["command"][1:]).func is migrate_command
    assert migrate["image"] == container["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_selectors_line_up(manifests: dict[str, dict[str, Any]], deployment: dict[str, Any]) -> None:
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(one(manifests, "Service")["spec"]["selector"], pod_labels)
    assert selects(one(manifests, "Service", "tus-s3-gateway-metrics")["spec"]["selector"], pod_labels)
    assert selects(one(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    for spread in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        assert selects(spread["labelSelector"]["matchLabels"], pod_labels)
    # The migrate Job's pod is never an endpoint of the Services.
    job_labels = one(manifests, "Job", "tus-s3-gateway-migrate")["spec"]["template"]["metadata"]["labels"]
    assert not selects(one(manifests, "Service")["spec"]["selector"], job_labels)
    # The ServiceMonitor picks the metrics Service only.
    monitor = one(manifests, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert selects(monitor, one(manifests, "Service", "tus-s3-gateway-metrics")["metadata"]["labels"])
    assert not selects(monitor, one(manifests, "Service")["metadata"]["labels"])
    target = one(manifests, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in {
        key.split("/")[1] for key in manifests if key.startswith("ServiceAccount/")}


def test_pods_run_as_the_image_user_with_a_writable_tmp(manifests: dict[str, dict[str, Any]],
                                                         container: dict[str, Any]) -> None:
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))  # type: ignore[union-attr]
    for key in ("Deployment/tus-s3-gateway", "Job/tus-s3-gateway-migrate"):
        pod = manifests[key]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
        for c in pod["containers"]:
            context = c["securityContext"]
            assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    # With a read-only root, the supervisor's PROMETHEUS_MULTIPROC_DIR (under /tmp) needs a volume.
    volumes = {v["name"]: v for v in manifests["Deployment/tus-s3-gateway"]["spec"]["template"]["spec"]["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert "cpu" in container["resources"]["requests"]  # the HPA's utilization is relative to it


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(documents) == len(load("kustomization.yaml")["resources"])
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tus-s3-gateway" for d in documents)
    assert not any(d["kind"] == "Secret" for d in documents)
