"""The Kubernetes manifests (deploy/kubernetes): valid against the Kubernetes schemas, and
consistent with tmws itself — settings it accepts, probe paths it serves, arguments its
command line parses, the patterns file it ships.

The schemas come from the ``kubernetes-validate`` package (offline JSON schemas per
Kubernetes release), validated strictly: an unknown field is an error, not ignored.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tmws.cli import _parser
from tmws.config import MIN_SECRET_LENGTH, Settings
from tmws.errors import ConfigError
from tmws.http.routes import ROUTES

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
# The oldest release still supported upstream and the newest the package knows.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())


def _load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((MANIFESTS / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict), name
    return document


def _resource_files() -> list[str]:
    return sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def _env(secret_key: str) -> dict[str, str]:
    """The environment a pod gets: the ConfigMap, then the Secret (envFrom order)."""
    settings = _load("configmap.yaml")["data"]
    secrets = dict(_load("secret.yaml")["stringData"])
    secrets["TMWS_SECRET_KEY"] = secret_key
    return {**settings, **secrets}


def _container(document: dict[str, Any]) -> dict[str, Any]:
    containers = document["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", _resource_files())
def test_each_manifest_is_valid_against_the_kubernetes_schemas(name: str, version: str) -> None:
    kubernetes_validate.validate(_load(name), version, strict=True)


def test_the_schemas_catch_a_wrong_field() -> None:
    """The check above can fail: a misspelt field is rejected."""
    broken = _load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret() -> None:
    listed = _load("kustomization.yaml")["resources"]
    assert sorted(listed) == [n for n in _resource_files() if n != "secret.yaml"]


def test_the_patterns_configmap_is_the_shipped_pattern_file() -> None:
    spec = importlib.util.spec_from_file_location("render_patterns",
                                                  MANIFESTS / "render_patterns.py")
    assert spec is not None and spec.loader is not None
    render_patterns = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_patterns)
    source = (ROOT / "deploy" / "config" / "patterns.yaml").read_text(encoding="utf-8")
    committed = (MANIFESTS / "patterns-configmap.yaml").read_text(encoding="utf-8")
    assert committed == render_patterns.render(source), "run `make k8s-patterns`"
    assert _load("patterns-configmap.yaml")["data"]["patterns.yaml"] == source


def test_the_settings_load_in_production_and_the_placeholder_key_is_refused() -> None:
    settings = Settings.from_env(_env("k" * (MIN_SECRET_LENGTH + 8)))
    assert settings.environment == "production" and settings.auth_enabled
    known = {Settings.env_name(name) for name in Settings.__struct_fields__}
    assert set(_load("configmap.yaml")["data"]) <= known
    assert set(_load("secret.yaml")["stringData"]) <= known
    with pytest.raises(ConfigError):
        Settings.from_env(_env(_load("secret.yaml")["stringData"]["TMWS_SECRET_KEY"]))


def test_the_pod_serves_on_the_configured_port_with_public_probes() -> None:
    settings = _load("configmap.yaml")["data"]
    container = _container(_load("deployment.yaml"))
    (port,) = container["ports"]
    assert port["containerPort"] == int(settings["TMWS_API_PORT"])
    public = {route.path for route in ROUTES if route.method == "GET" and route.scope is None}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in public, probe
        assert container[probe]["httpGet"]["port"] == port["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    # Start-up may wait TMWS_STARTUP_WAIT for PostgreSQL: the startup probe allows it.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= float(
        settings["TMWS_STARTUP_WAIT"])


def test_termination_outlasts_the_drain() -> None:
    pod = _load("deployment.yaml")["spec"]["template"]["spec"]
    pause = _container(_load("deployment.yaml"))["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    drain = int(_load("configmap.yaml")["data"]["TMWS_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain + int(pause[1])


def test_the_commands_parse_and_the_patterns_mount_matches_the_setting() -> None:
    for name in ("deployment.yaml", "migrate-job.yaml"):
        args = _container(_load(name))["args"]
        assert args[0] == "tmws"
        _parser().parse_args(args[1:])
    pattern_config = PurePosixPath(_load("configmap.yaml")["data"]["TMWS_PATTERN_CONFIG"])
    deployment = _load("deployment.yaml")
    mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert mounts["patterns"] == str(pattern_config.parent)
    assert volumes["patterns"]["configMap"]["name"] == _load(
        "patterns-configmap.yaml")["metadata"]["name"]
    assert pattern_config.name in _load("patterns-configmap.yaml")["data"]
    # A read-only root file system: every directory tmws writes is a volume.
    assert _container(deployment)["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"/tmp", _load("configmap.yaml")["data"]["TMWS_DATA_DIR"]} <= set(mounts.values())


def test_selectors_and_references_meet() -> None:
    deployment = _load("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for name, selector in (
            ("deployment.yaml", deployment["spec"]["selector"]["matchLabels"]),
            ("service.yaml", _load("service.yaml")["spec"]["selector"]),
            ("pdb.yaml", _load("pdb.yaml")["spec"]["selector"]["matchLabels"])):
        assert selector.items() <= pod_labels.items(), name
    target = _load("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert _load("hpa.yaml")["spec"]["minReplicas"] > _load("pdb.yaml")["spec"]["minAvailable"]
    service_port = _load("service.yaml")["spec"]["ports"][0]
    assert service_port["targetPort"] == _container(deployment)["ports"][0]["name"]
    for name in ("deployment.yaml", "migrate-job.yaml"):
        refs = _container(_load(name))["envFrom"]
        assert [r.get("configMapRef", r.get("secretRef"))["name"] for r in refs] == [
            _load("configmap.yaml")["metadata"]["name"], _load("secret.yaml")["metadata"]["name"]]


def test_the_pods_run_as_the_image_s_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(r"useradd [^\n]*--uid (\d+) tmws", dockerfile)
    assert match is not None
    for name in ("deployment.yaml", "migrate-job.yaml"):
        security = _load(name)["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsUser"] == int(match.group(1)) and security["runAsNonRoot"]
