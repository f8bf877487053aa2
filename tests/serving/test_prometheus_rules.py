"""Prometheus rules, scrape config and Grafana dashboard agree with serving/metrics.py.

The promtool checks run Debian's promtool (2.42, installed by ``make setup`` as root) and skip
where it is missing; the name, label and threshold checks need only Python.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.drift import PSI_EPSILON
from pipeline.model_card import FeatureReference, InputReference, ModelCard, ReferenceConfidence
from serving.metrics import ServiceMetrics

ROOT = Path(__file__).parents[2]

PROM = ROOT / "serving" / "prometheus"
RECORDING, ALERTS, RULES_TEST = (
    PROM / f for f in ("recording_rules.yml", "alert_rules.yml", "rules_test.yml")
)
DASHBOARD = ROOT / "serving" / "grafana" / "rankcal-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian's prometheus package gives it)"
)
# BentoML 1.4's request histogram (namespace bentoml_service, _bentoml_impl/server/app.py).
BENTOML_SERIES = {
    f"bentoml_service_request_duration_seconds_{s}" for s in ("bucket", "count", "sum")
}
# Thresholds of alert_rules.yml; the dashboard's threshold lines must show the same numbers.
THRESHOLDS = {
    "RankcalConfidenceDrift": 0.25,
    "RankcalConfidenceKSDrift": 0.2,
    "RankcalEstimatedAccuracyDrop": 0.05,
    "RankcalHighOODRate": 0.2,
    "RankcalInputDrift": 1,
    "RankcalEstimateNotValid": 1,
    "RankcalRealizedAccuracyDisagrees": 0.05,
}
NAME = re.compile(r"\b(?:rankcal[_:]|bentoml_)[A-Za-z0-9_:]*")
# The model of rules_test.yml (see its header comment).
TEST_EDGES, TEST_COUNTS = [0.0, 0.5, 0.9, 0.99, 1.0], [10, 20, 30, 40]


def load_yaml(path: Path) -> Any:
    with path.open() as fh:
        return yaml.safe_load(fh)


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def exported_registry() -> CollectorRegistry:
    card = ModelCard(
        dataset="toy",
        class_names=["cat", "dog"],
        image_shape=[8, 8, 1],
        resize="resize_shorter_then_center_crop",
        mean=[0.5],
        std=[0.25],
        temperature=1.0,
        ood_threshold=0.4,
        ood_tpr=0.95,
        reference_confidence=ReferenceConfidence(TEST_EDGES, TEST_COUNTS, mean=0.85),
        test_accuracy=80.0,
        test_ece=2.0,
        model_version="v1",
        input_reference=InputReference(
            edges=[0.0, 0.5, 1.0],
            # 400 training images binned, as rules_test.yml's rankcal_input_reference_images
            mean=[300, 100],
            contrast=[200, 200],
            dark_share=[40, 360],
            bright_share=[360, 40],
        ),
        # rules_test.yml's feature norm: half the training images in the bin ending at 0.5, half
        # in the last (the other eight bins, empty in reference and traffic, add 0 to a PSI).
        feature_reference=FeatureReference(
            quantiles=[float(q) for q in range(11)], counts=[0, 0, 0, 0, 200, 0, 0, 0, 0, 200]
        ),
    )
    registry = CollectorRegistry()
    ServiceMetrics(card, window=10, provider="CPUExecutionProvider", registry=registry)
    return registry


def exported_names() -> set[str]:
    return {s.name for f in exported_registry().collect() for s in f.samples}


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules(RECORDING)}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RECORDING.name, ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    result = promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(PROM / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["localhost:3000"]
    assert config["rule_files"] == [RECORDING.name, ALERTS.name]


def test_psi_rule_uses_the_drift_epsilon() -> None:
    (rule,) = [r for r in rules(RECORDING) if r["record"] == "rankcal:psi:5m"]
    added = [float(x) for x in re.findall(r"\+\s*([0-9.eE+-]+)\s*\)", rule["expr"])]
    assert added == [PSI_EPSILON, PSI_EPSILON]


def test_rule_metric_names_exist() -> None:
    exported, recorded = exported_names(), recorded_names()
    for rule in rules(RECORDING) + rules(ALERTS):
        for name in NAME.findall(rule["expr"]):
            known = recorded if ":" in name else exported
            assert name in known, f"{rule.get('record') or rule['alert']} reads unknown {name}"


def test_alert_thresholds_match_expressions_and_annotations() -> None:
    alerts = {rule["alert"]: rule for rule in rules(ALERTS)}
    assert set(alerts) == set(THRESHOLDS)
    for name, threshold in THRESHOLDS.items():
        rule = alerts[name]
        assert float(rule["annotations"]["threshold"]) == threshold
        assert re.search(rf"[<>-]\s*{re.escape(str(threshold))}\b", rule["expr"]), name
        assert {"summary", "description"} <= set(rule["annotations"])


def test_rules_test_series_use_exported_labels_and_values() -> None:
    """The synthetic series of rules_test.yml look exactly like what the service exports."""
    registry = exported_registry()
    exported = exported_names()
    series = re.compile(r"(\w+)\{(.*)\}")
    for group in load_yaml(RULES_TEST)["tests"]:
        for item in group["input_series"]:
            name, labels = series.fullmatch(item["series"]).groups()
            assert name in exported, name
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            del pairs["job"], pairs["instance"]
            if "reference" in name or name.endswith("_ratio"):
                start = float(item["values"].split("+")[0])
                assert registry.get_sample_value(name, pairs) == pytest.approx(start), item
            elif "le" in pairs or "bin" in pairs:
                assert registry.get_sample_value(name, pairs) is not None, item


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_reads_only_existing_series() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 36
    (source,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    known = exported_names() | recorded_names() | BENTOML_SERIES
    used = set()
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            names = NAME.findall(target["expr"])
            assert names, target["expr"]
            assert set(names) <= known, (panel["title"], set(names) - known)
            used.update(names)
    required = {
        "rankcal:estimated_accuracy:rate5m",
        "rankcal_model_evaluation_accuracy_ratio",
        "rankcal:psi:5m",
        "rankcal:psi_excess:5m",
        "rankcal:ks:5m",
        "rankcal_confidence_bucket",
        "rankcal_predictions_total",
        "rankcal:ood_ratio:rate5m",
        "rankcal_rejected_requests_total",
        "bentoml_service_request_duration_seconds_bucket",
        "rankcal:input_psi:5m",
        "rankcal:estimate_valid:5m",
        "rankcal:realized_accuracy:1h",
        "rankcal:labelled_confidence:1h",
        "rankcal:realized_ece:1h",
        "rankcal:realized_bin_accuracy:1h",
        "rankcal:realized_bin_confidence:1h",
    }
    assert required <= used
    assert any(p["type"] == "heatmap" for p in board["panels"])


def test_dashboard_threshold_lines_match_alerts() -> None:
    board = json.loads(DASHBOARD.read_text())

    def steps(series: str) -> set[float]:
        (panel,) = [p for p in board["panels"] if p["targets"][0]["expr"].startswith(series)]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
        return {s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None}

    assert THRESHOLDS["RankcalConfidenceDrift"] in steps("rankcal:psi_excess:5m")
    assert THRESHOLDS["RankcalConfidenceKSDrift"] in steps("rankcal:ks:5m")
    assert THRESHOLDS["RankcalHighOODRate"] in steps("rankcal:ood_ratio:rate5m")
    assert THRESHOLDS["RankcalInputDrift"] in steps("rankcal:input_psi:5m")


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, is valid PromQL for promtool."""
    fill = {"$__rate_interval": "1m", "$job": ".+"}
    queries = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, val in fill.items():
            expr = expr.replace(var, val)
        if expr.startswith("label_values("):  # a Grafana function, not PromQL
            continue
        queries.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# Gauges whose values are no shares or probabilities: scores, counts, settings, the info series.
NOT_RATIOS = {
    "rankcal_window_psi",
    "rankcal_window_ks",
    "rankcal_ood_threshold",
    "rankcal_window_size",
    "rankcal_window_capacity",
    "rankcal_min_predictions",
    "rankcal_model_info",
    "rankcal_reference_images",
    "rankcal_input_reference_images",
}


def test_metric_names_follow_prometheus_conventions() -> None:
    """Counters end in _total; every other gauge of ours is a share or probability in [0, 1]
    and says so with _ratio (https://prometheus.io/docs/practices/naming/)."""
    families = {f.name: f for f in exported_registry().collect() if f.name.startswith("rankcal")}
    assert families
    for name, family in families.items():
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        elif family.type == "gauge" and name not in NOT_RATIOS:
            assert name.endswith("_ratio"), f"{name}: a share or probability needs _ratio"
            values = [s.value for s in family.samples if s.value == s.value]  # not NaN
            assert all(0 <= v <= 1 for v in values), (name, values)


@needs_promtool
def test_make_prometheus_config_scrapes_serve_port_and_finds_its_rules(tmp_path: Path) -> None:
    from serving.prometheus_config import main

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["serve"]["port"] = 3917
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "elsewhere" / "prometheus.yml"
    assert main([str(tmp_path / "p.yaml"), str(out)]) == 0
    config = load_yaml(out)
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["localhost:3917"]
    # checked from another folder: the rule files resolve wherever Prometheus starts
    result = subprocess.run(
        ["promtool", "check", "config", str(out)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout
