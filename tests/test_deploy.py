"""deploy/ checked without a container engine: manifests against the Kubernetes, compose and
KEDA schemas, the systemd unit with systemd-analyze, the Dockerfile's essentials."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.settings import Settings

from .helpers import ROOT

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.31"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_resources() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        out += [(f"{path.name}:{d['kind']}", d) for d in documents(path)]
    return out


@pytest.mark.parametrize(
    ("name", "doc"),
    [r for r in k8s_resources() if not r[1]["apiVersion"].startswith("keda.sh/")],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_kubernetes_manifests_are_valid(name: str, doc: dict[str, Any]) -> None:
    """Core resources validate strictly (no unknown fields) against Kubernetes' schemas."""
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _strip_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nones(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("name", "doc"),
    [r for r in k8s_resources() if r[1]["apiVersion"].startswith("keda.sh/")],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_keda_resources_match_the_crd(name: str, doc: dict[str, Any]) -> None:
    """KEDA resources parse with the models generated from KEDA's CRDs, and nothing in them is
    unknown to the CRD (a round trip keeps every field)."""
    from cloudcoil.models.keda import v1alpha1

    model = getattr(v1alpha1, doc["kind"])
    parsed = model.model_validate(doc)
    again = _strip_nones(parsed.model_dump(by_alias=True, exclude_none=True, mode="json"))
    assert again == doc


def test_deployment_fits_the_workers_shutdown() -> None:
    """The pod's grace outlasts the worker's, probes hit the health endpoints, the PDB and the
    autoscaler point at the Deployment, and KEDA watches the worker's stream and group."""
    resources = dict(k8s_resources())
    config = resources["configmap.yaml:ConfigMap"]["data"]
    deployment = resources["deployment.yaml:Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > int(config["RUNNER_SHUTDOWN_GRACE_SECONDS"])
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = resources["pdb.yaml:PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    scaled = resources["keda.yaml:ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    defaults = Settings()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis-streams"
        assert trigger["metadata"]["stream"] == f"{defaults.prefix}:jobs"
        assert trigger["metadata"]["consumerGroup"] == "workers"
    names = set(Settings.__dataclass_fields__)
    for key in config:
        assert key.startswith("RUNNER_") and key[7:].lower() in names, key


def test_compose_file_is_valid() -> None:
    """The compose file validates against the compose specification's schema."""
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    compose = documents(DEPLOY / "compose.yaml")[0]
    redis_cmd = compose["services"]["redis"]["command"]
    assert "--appendonly" in redis_cmd and "noeviction" in redis_cmd
    assert compose["services"]["worker"]["deploy"]["replicas"] == 2
    assert "producer" in compose["services"]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the template unit."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = (DEPLOY / "systemd" / "runner@.service").read_text()
    assert "ExecStart=/opt/runner/bin/runner worker" in unit
    workdir = tmp_path
    # verify also checks that ExecStart exists; point it at a binary this machine has.
    (workdir / "runner@.service").write_text(unit.replace("/opt/runner/bin/runner", "/bin/true"))
    out = subprocess.run(
        [analyze, "verify", str(workdir / "runner@.service")], capture_output=True, text=True
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_dockerfile_essentials() -> None:
    """Non-root user, the package (and so the bundled model) installed, a health check, and an
    exec-form entrypoint so that SIGTERM reaches the worker."""
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages = [line for line in lines if line.startswith("FROM ")]
    final = lines[lines.index(stages[-1]) :]
    user = next(line for line in final if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("root", "0")
    assert any("pip install" in line and " ." in line for line in lines)
    health = next(line for line in final if line.startswith("HEALTHCHECK "))
    assert "/healthz" in health
    entry = next(line for line in final if line.startswith("ENTRYPOINT "))
    assert json.loads(entry.split(" ", 1)[1]) == ["runner"]
    assert "STOPSIGNAL SIGTERM" in final
    assert any(line.startswith("ENV ") and "RUNNER_HEALTH_PORT=8080" in line for line in final)
