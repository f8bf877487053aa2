"""deploy/: the Kubernetes manifests, checked offline against the Kubernetes schemas, against the
service they run (port, probes, settings, user) and against the shipped Prometheus rules."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.config import ServeConfig, env_overrides, load_section, read_params
from serving.prometheus_rule import prometheus_rule, rule_groups, write_prometheus_rule
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
CORE = ("deployment.yaml", "service.yaml", "hpa.yaml")
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
KUBECTL = shutil.which("kubectl")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", CORE)
def test_core_manifests_are_valid_kubernetes(name: str, version: str) -> None:
    kubernetes_validate.validate(load(name), version, strict=True)


def test_the_schema_check_can_fail() -> None:
    bad = copy.deepcopy(load("deployment.yaml"))
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load("kustomization.yaml")
    manifests = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its kustomize) is not installed")
def test_kustomize_renders_every_resource_and_they_validate() -> None:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    docs = list(yaml.safe_load_all(done.stdout))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"]
    )
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rankcal"
        if doc["kind"] in ("Deployment", "Service", "HorizontalPodAutoscaler"):
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)


def container() -> dict[str, Any]:
    (only,) = load("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return only


def test_the_deployment_runs_the_service_as_its_image_expects() -> None:
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    main = container()
    env = {e["name"]: e["value"] for e in main["env"] if "value" in e}
    # the feedback key comes from one Secret for every replica, and is optional (feedback off)
    (key,) = [e for e in main["env"] if e["name"] == "RANKCAL_FEEDBACK_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {
        "name": "rankcal-feedback",
        "key": "key",
        "optional": True,
    }
    # the settings by environment are serve keys the service accepts
    params = read_params(ROOT / "params.yaml")
    serve = env_overrides(params["serve"], "serve", env)
    parsed: ServeConfig = load_section({**params, "serve": serve}, "serve")
    assert main["ports"] == [{"name": "http", "containerPort": parsed.port}]
    assert env["RANKCAL_MODEL"] == "/app/models/model.onnx"  # where the serve image puts it
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert {"requests", "limits"} <= set(main["resources"])
    # non-root, as the image's user (Dockerfile: useradd --uid 10001)
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = pod["securityContext"]["runAsUser"]
    assert f"useradd --create-home --uid {uid} rankcal" in (ROOT / "Dockerfile").read_text()
    assert main["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_service_and_monitor_select_the_pods() -> None:
    pods = load("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    service, monitor = load("service.yaml"), load("servicemonitor.yaml")
    assert service["spec"]["selector"].items() <= pods.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "http"
    assert endpoint["path"] == "/metrics"
    hpa = load("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (hpa["kind"], hpa["name"]) == ("Deployment", load("deployment.yaml")["metadata"]["name"])


def test_the_prometheus_rule_is_the_shipped_rules(tmp_path: Path) -> None:
    """One source: deploy/prometheusrule.yaml is what `make k8s-rules` writes from
    serving/prometheus/, and its groups are those files' groups."""
    shipped = load("prometheusrule.yaml")
    assert shipped == prometheus_rule(ROOT / "serving" / "prometheus")
    assert shipped["spec"]["groups"] == rule_groups(ROOT / "serving" / "prometheus")
    fresh = tmp_path / "rule.yaml"
    write_prometheus_rule(ROOT / "serving" / "prometheus", fresh)
    assert fresh.read_text() == (DEPLOY / "prometheusrule.yaml").read_text(), (
        "deploy/prometheusrule.yaml is stale: run make k8s-rules"
    )
    names = [
        r.get("record") or r.get("alert") for g in shipped["spec"]["groups"] for r in g["rules"]
    ]
    assert "rankcal:estimate_valid:5m" in names and "RankcalInputDrift" in names
