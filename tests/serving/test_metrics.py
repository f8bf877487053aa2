"""Service metrics: exact counts, the rolling window against pipeline.drift, multiprocess mode."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import load_section
from pipeline.drift import PSI_EPSILON, bin_counts, ks_statistic, psi
from pipeline.feature_norm import norm_rank
from pipeline.input_stats import input_statistics
from pipeline.model_card import FeatureReference, InputReference, ModelCard, ReferenceConfidence
from serving.metrics import REJECTION_REASONS, ConfidenceWindow, ServiceMetrics

ROOT = Path(__file__).parents[2]

EDGES = [0.0, 0.5, 0.9, 0.99, 1.0]
LE = ["0.5", "0.9", "0.99", "1.0"]
REFERENCE = [10, 20, 30, 40]
CLASSES = ["cat", "dog", "eel"]
CPU = "CPUExecutionProvider"


def make_card(edges: list[float] = EDGES, counts: list[int] = REFERENCE) -> ModelCard:
    return ModelCard(
        dataset="toy",
        class_names=CLASSES,
        image_shape=[8, 8, 1],
        resize="resize_shorter_then_center_crop",
        mean=[0.5],
        std=[0.25],
        temperature=1.5,
        ood_threshold=0.4,
        ood_tpr=0.95,
        reference_confidence=ReferenceConfidence(bin_edges=edges, counts=counts, mean=0.85),
        test_accuracy=80.0,
        test_ece=2.5,
        model_version="v1-abc123",
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ServiceMetrics:
    return ServiceMetrics(make_card(), window=10, provider=CPU, registry=registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def record(m: ServiceMetrics, conf: list[float], pred: list[int], ood: list[bool]) -> None:
    m.record_predictions(np.array(conf), np.array(pred), np.array(ood, dtype=bool))


def test_histogram_and_counters_are_exact(metrics: ServiceMetrics, registry) -> None:
    # (0, 0.5]: 0.0 0.3 0.5 | (0.5, 0.9]: 0.7 0.9 | (0.9, 0.99]: 0.95 | (0.99, 1]: 0.995 1.0
    conf = [0.0, 0.3, 0.5, 0.7, 0.9, 0.95, 0.995, 1.0]
    record(metrics, conf, [0, 1, 1, 2, 2, 2, 0, 1], [True, True] + [False] * 6)
    buckets = [value(registry, "rankcal_confidence_bucket", le=le) for le in [*LE, "+Inf"]]
    assert buckets == [3, 5, 6, 8, 8]
    assert value(registry, "rankcal_confidence_count") == 8
    assert value(registry, "rankcal_confidence_sum") == pytest.approx(5.345)
    assert [value(registry, "rankcal_confidence_bin_total", bin=le) for le in LE] == [3, 2, 1, 2]
    by_class = [value(registry, "rankcal_predictions_total", class_name=c) for c in CLASSES]
    assert by_class == [2, 3, 3]
    assert value(registry, "rankcal_ood_predictions_total") == 2
    assert value(registry, "rankcal_rejected_requests_total", reason="too_large") == 0


def test_float32_confidence_lands_in_the_same_bucket_everywhere(metrics, registry) -> None:
    # float32(0.9) is just below 0.9; softmax in float32 can overshoot 1 by an ulp.
    conf = np.array([0.9, 1.0000001], dtype=np.float32)
    metrics.record_predictions(conf, np.array([0, 0]), np.array([False, False]))
    assert value(registry, "rankcal_confidence_bucket", le="0.9") == 1
    assert value(registry, "rankcal_confidence_bucket", le="1.0") == 2
    assert [value(registry, "rankcal_confidence_bin_total", bin=le) for le in LE] == [0, 1, 0, 1]
    np.testing.assert_array_equal(
        metrics._window.counts, bin_counts(np.clip(conf.astype(np.float64), 0, 1), EDGES)
    )


def test_window_gauges_equal_pipeline_drift(metrics: ServiceMetrics, registry) -> None:
    conf = np.random.default_rng(0).uniform(0.3, 1.0, size=7)
    metrics.record_predictions(conf, np.zeros(7, dtype=np.int64), np.zeros(7, dtype=bool))
    counts = bin_counts(conf, EDGES)
    expected = {
        "mean_confidence": conf.mean(),
        "estimated_accuracy": conf.mean(),
        "psi": psi(counts, REFERENCE),
        "ks": ks_statistic(counts, REFERENCE),
        "size": 7.0,
    }
    assert metrics.window_stats() == pytest.approx(expected, rel=1e-12)
    gauges = {
        "mean_confidence": "rankcal_window_mean_confidence_ratio",
        "estimated_accuracy": "rankcal_window_estimated_accuracy_ratio",
        "psi": "rankcal_window_psi",
        "ks": "rankcal_window_ks",
        "size": "rankcal_window_size",
    }
    assert {k: value(registry, name) for k, name in gauges.items()} == pytest.approx(expected)


def test_window_two_bins_by_hand(registry: CollectorRegistry) -> None:
    card = make_card(edges=[0.0, 0.5, 1.0], counts=[1, 1])  # reference fractions [0.5, 0.5]
    m = ServiceMetrics(card, window=10, provider=CPU, registry=registry)
    record(m, [0.2, 0.8, 0.9, 0.6], [0, 1, 1, 1], [False] * 4)  # live fractions [0.25, 0.75]
    eps = PSI_EPSILON
    hand_psi = -0.25 * math.log((0.25 + eps) / (0.5 + eps)) + 0.25 * math.log(
        (0.75 + eps) / (0.5 + eps)
    )
    stats = m.window_stats()
    assert stats["mean_confidence"] == pytest.approx(0.625)
    assert stats["psi"] == pytest.approx(hand_psi)
    assert stats["ks"] == pytest.approx(0.25)


def test_window_keeps_only_the_last_predictions(metrics: ServiceMetrics) -> None:
    stream = np.random.default_rng(1).uniform(0.0, 1.0, size=25)
    for start, stop in [(0, 3), (3, 4), (4, 16), (16, 25)]:
        n = stop - start
        metrics.record_predictions(stream[start:stop], np.zeros(n, np.int64), np.zeros(n, bool))
    last = stream[-10:]
    stats = metrics.window_stats()
    assert stats["size"] == 10
    assert stats["mean_confidence"] == pytest.approx(last.mean())
    assert stats["psi"] == pytest.approx(psi(bin_counts(last, EDGES), REFERENCE))
    np.testing.assert_array_equal(metrics._window.values(), last)


def test_ring_buffer_matches_a_plain_list_over_many_batches() -> None:
    rng = np.random.default_rng(2)
    window, kept = ConfidenceWindow(50, EDGES), np.empty(0)
    for _ in range(300):
        batch = rng.uniform(0.0, 1.0, size=int(rng.integers(0, 80)))
        window.push(batch)
        kept = np.concatenate([kept, batch])[-50:]
        assert window.size == kept.size
        np.testing.assert_array_equal(window.counts, bin_counts(kept, EDGES))
        if kept.size:
            assert window.mean() == pytest.approx(kept.mean(), rel=1e-12)
    np.testing.assert_array_equal(window.values(), kept)


def test_window_gauges_wait_for_min_predictions(registry) -> None:
    m = ServiceMetrics(make_card(), window=10, provider=CPU, registry=registry, min_predictions=4)
    assert value(registry, "rankcal_min_predictions") == 4
    for seen in range(1, 6):
        m.record_predictions(np.array([0.9]), np.array([0]), np.array([False]))
        stats = m.window_stats()
        assert stats["size"] == seen and value(registry, "rankcal_window_size") == seen
        ready = seen >= 4
        for key, gauge in [("psi", "rankcal_window_psi"), ("ks", "rankcal_window_ks")]:
            assert math.isnan(stats[key]) != ready
            assert math.isnan(value(registry, gauge)) != ready
        assert math.isnan(value(registry, "rankcal_window_estimated_accuracy_ratio")) != ready
    assert stats["mean_confidence"] == pytest.approx(0.9)
    # and the counters count every prediction meanwhile
    assert value(registry, "rankcal_confidence_count") == 5


@pytest.mark.parametrize("bad", [0, 11])
def test_min_predictions_must_fit_the_window(registry, bad: int) -> None:
    with pytest.raises(ValueError, match="min_predictions"):
        ServiceMetrics(make_card(), window=10, provider=CPU, registry=registry, min_predictions=bad)


def test_empty_window_reads_nan(metrics: ServiceMetrics, registry) -> None:
    stats = metrics.window_stats()
    assert stats["size"] == 0
    assert all(math.isnan(stats[k]) for k in ("mean_confidence", "estimated_accuracy", "psi"))
    assert math.isnan(value(registry, "rankcal_window_psi"))
    assert value(registry, "rankcal_window_size") == 0
    metrics.record_predictions(np.empty(0), np.empty(0, np.int64), np.empty(0, bool))
    assert value(registry, "rankcal_confidence_count") == 0


def test_reference_and_model_gauges_equal_the_card(metrics, registry) -> None:
    fractions = np.array(REFERENCE) / sum(REFERENCE)
    for le, fraction, cdf in zip(LE, fractions, np.cumsum(REFERENCE) / sum(REFERENCE), strict=True):
        assert value(registry, "rankcal_reference_bucket_ratio", bin=le) == fraction
        assert value(registry, "rankcal_reference_cdf_ratio", bin=le) == cdf
    assert value(registry, "rankcal_reference_cdf_ratio", bin="1.0") == 1.0
    assert value(registry, "rankcal_model_evaluation_accuracy_ratio") == 0.8  # card: 80 %
    assert value(registry, "rankcal_reference_mean_confidence_ratio") == 0.85
    # the reference's size, for the drift rules' sampling term
    assert value(registry, "rankcal_reference_images") == sum(REFERENCE)
    assert value(registry, "rankcal_ood_threshold") == 0.4
    assert value(registry, "rankcal_window_capacity") == 10
    info = {"model_version": "v1-abc123", "provider": CPU, "dataset": "toy", "ood_score": "msp"}
    assert value(registry, "rankcal_model_info", **info) == 1


def test_bin_labels_agree_with_the_histograms_le(params, registry) -> None:
    edges = load_section(params, "evaluate").reference_edges
    card = make_card(edges=edges, counts=[1] * (len(edges) - 1))
    ServiceMetrics(
        card, window=load_section(params, "serve").window, provider=CPU, registry=registry
    )
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }

    def labels(family: str, sample: str, label: str) -> list[str]:
        return [s.labels[label] for s in families[family].samples if s.name == sample]

    histogram = labels("rankcal_confidence", "rankcal_confidence_bucket", "le")
    assert histogram[-1] == "+Inf"
    assert [float(le) for le in histogram[:-1]] == edges[1:]
    assert "1.0" in histogram
    counter = labels("rankcal_confidence_bin", "rankcal_confidence_bin_total", "bin")
    assert counter == histogram[:-1]
    for name in ("rankcal_reference_bucket_ratio", "rankcal_reference_cdf_ratio"):
        assert labels(name, name, "bin") == histogram[:-1]
    # only the histogram carries le (promtool check metrics refuses it elsewhere)
    carrying_le = {s.name for f in families.values() for s in f.samples if "le" in s.labels}
    assert carrying_le == {"rankcal_confidence_bucket"}


def test_rejections_touch_only_the_rejection_counter(metrics, registry) -> None:
    metrics.record_rejection("too_large")
    metrics.record_rejection("too_large")
    metrics.record_rejection("bad_shape")
    metrics.record_rejection("pickle_refused")  # reasons outside the known list are fine
    assert value(registry, "rankcal_rejected_requests_total", reason="too_large") == 2
    assert value(registry, "rankcal_rejected_requests_total", reason="bad_shape") == 1
    assert value(registry, "rankcal_rejected_requests_total", reason="pickle_refused") == 1
    assert value(registry, "rankcal_confidence_count") == 0
    assert sum(value(registry, "rankcal_predictions_total", class_name=c) for c in CLASSES) == 0
    assert metrics.window_stats()["size"] == 0
    for bad in ["Too Large", "", "x" * 41, "drop table"]:
        with pytest.raises(ValueError, match="snake_case"):
            metrics.record_rejection(bad)


@pytest.mark.parametrize(
    ("conf", "pred", "ood", "message"),
    [
        ([0.5, 0.6], [0], [False, False], "1-D of one length"),
        ([0.5, 1.5], [0, 0], [False, False], r"in \[0, 1\]"),
        ([0.5, math.nan], [0, 0], [False, False], r"in \[0, 1\]"),
        ([0.5, 0.6], [0, 3], [False, False], "out of range"),
        ([0.5, 0.6], [0, -1], [False, False], "class indices"),
        ([0.5, 0.6], [0.0, 1.0], [False, False], "class indices"),
        ([0.5, 0.6], [0, 1], [0, 1], "bool"),
    ],
)
def test_bad_input_raises_and_records_nothing(metrics, registry, conf, pred, ood, message) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.record_predictions(np.array(conf), np.array(pred), np.array(ood))
    assert value(registry, "rankcal_confidence_count") == 0
    assert metrics.window_stats()["size"] == 0


def test_concurrent_requests_are_all_counted(registry: CollectorRegistry) -> None:
    m = ServiceMetrics(make_card(), window=500, provider=CPU, registry=registry)

    def worker(seed: int) -> None:
        for c in np.random.default_rng(seed).uniform(0, 1, size=200):
            m.record_predictions(np.array([c]), np.array([0]), np.array([False]))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert value(registry, "rankcal_confidence_count") == 800
    assert m.window_stats()["size"] == 500
    assert m._window.counts.sum() == 500


def test_warns_when_prometheus_client_was_imported_too_early(
    monkeypatch, tmp_path, registry, caplog
) -> None:
    # prometheus_client is already imported here in single-process mode.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with caplog.at_level("WARNING", logger="serving.metrics"):
        ServiceMetrics(make_card(), window=10, provider=CPU, registry=registry)
    assert "imported before" in caplog.text


WORKER_SCRIPT = """
import json, os, sys
import numpy as np
from pipeline.model_card import ModelCard
from serving.metrics import ServiceMetrics
import prometheus_client.values

card_json, traffic, provider = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
m = ServiceMetrics(ModelCard.from_json(card_json), window=4, provider=provider)
m.record_predictions(
    np.array(traffic["conf"]), np.array(traffic["pred"]), np.array(traffic["ood"], dtype=bool)
)
m.record_rejection(traffic["reject"])
print(json.dumps({"pid": os.getpid(), "stats": m.window_stats(),
                  "multiprocess": prometheus_client.values.ValueClass._multiprocess}))
"""

TRAFFIC = [
    {
        "conf": [0.2, 0.95, 1.0],
        "pred": [0, 1, 1],
        "ood": [True, False, False],
        "reject": "too_large",
    },
    {
        "conf": [0.6, 0.7, 0.995, 0.3, 0.999],
        "pred": [2, 2, 0, 1, 0],
        "ood": [False, False, False, True, False],
        "reject": "bad_shape",
    },
]


def run_workers(tmp_path: Path) -> list[dict[str, Any]]:
    """Two worker processes sharing one PROMETHEUS_MULTIPROC_DIR, as BentoML runs them."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    card = make_card().to_json()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, card, json.dumps(traffic), provider],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for traffic, provider in zip(TRAFFIC, [CPU, "CUDAExecutionProvider"], strict=True)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    return outputs


def test_multiprocess_workers_sum_and_keep_every_metric(tmp_path: Path) -> None:
    workers = run_workers(tmp_path)
    assert all(w["multiprocess"] for w in workers)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    # Every metric a single process defines shows up aggregated (none lost to another's name).
    single = CollectorRegistry()
    ServiceMetrics(make_card(), window=4, provider=CPU, registry=single)
    assert set(families) == {f.name for f in single.collect() if not f.name.endswith("_created")}

    def samples(family: str, name: str | None = None) -> dict[tuple, float]:
        return {
            tuple(sorted(s.labels.items())): s.value
            for s in families[family].samples
            if s.name == (name or family)
        }

    both = TRAFFIC[0]["conf"] + TRAFFIC[1]["conf"]  # 8 predictions over two processes
    buckets = samples("rankcal_confidence", "rankcal_confidence_bucket")
    assert [buckets[(("le", le),)] for le in [*LE, "+Inf"]] == [2, 4, 5, 8, 8]
    assert samples("rankcal_confidence", "rankcal_confidence_count") == {(): 8}
    assert samples("rankcal_confidence", "rankcal_confidence_sum")[()] == pytest.approx(sum(both))
    bins = samples("rankcal_confidence_bin", "rankcal_confidence_bin_total")
    assert [bins[(("bin", le),)] for le in LE] == bin_counts(np.array(both), EDGES).tolist()
    classes = samples("rankcal_predictions", "rankcal_predictions_total")
    assert [classes[(("class_name", c),)] for c in CLASSES] == [3, 3, 2]
    assert samples("rankcal_ood_predictions", "rankcal_ood_predictions_total") == {(): 2}
    rejected = samples("rankcal_rejected_requests", "rankcal_rejected_requests_total")
    assert rejected[(("reason", "too_large"),)] == 1
    assert rejected[(("reason", "bad_shape"),)] == 1

    # Window gauges: one series per process, each that process's own window (capacity 4).
    psi_by_pid = {dict(k)["pid"]: v for k, v in samples("rankcal_window_psi").items()}
    assert psi_by_pid == pytest.approx({str(w["pid"]): w["stats"]["psi"] for w in workers})
    sizes = {dict(k)["pid"]: v for k, v in samples("rankcal_window_size").items()}
    assert sizes == {str(workers[0]["pid"]): 3, str(workers[1]["pid"]): 4}

    # Static gauges: one series, no pid; a worker on another provider shows as its own series.
    assert samples("rankcal_model_evaluation_accuracy_ratio") == {(): 0.8}
    assert samples("rankcal_reference_cdf_ratio")[(("bin", "0.99"),)] == 0.6
    providers = {dict(k)["provider"] for k in samples("rankcal_model_info")}
    assert providers == {CPU, "CUDAExecutionProvider"}


def test_every_reason_the_service_gives_is_pre_registered() -> None:
    files = ("serving/images.py", "serving/guard.py", "pipeline/images.py")
    source = "".join((ROOT / f).read_text() for f in files)
    given = set(re.findall(r'reason="([a-z_]+)"', source))
    assert given and given <= set(REJECTION_REASONS), given - set(REJECTION_REASONS)


def input_card() -> ModelCard:
    reference = InputReference(
        edges=[0.0, 0.5, 1.0], mean=[3, 1], contrast=[1, 1], dark_share=[1, 3], bright_share=[4, 0]
    )
    return dataclasses.replace(make_card(), input_reference=reference)


def test_input_statistics_are_binned_on_the_cards_edges(registry) -> None:
    m = ServiceMetrics(input_card(), window=10, provider=CPU, registry=registry)
    reference = {
        ("mean", "0.5"): 0.75,
        ("mean", "1.0"): 0.25,
        ("dark_share", "0.5"): 0.25,
        ("bright_share", "1.0"): 0.0,
    }
    for (statistic, upper), share in reference.items():
        labels = {"statistic": statistic, "bin": upper}
        assert value(registry, "rankcal_input_reference_ratio", **labels) == share
        assert value(registry, "rankcal_input_bin_total", **labels) == 0  # present from the start
    for statistic, images in {"mean": 4, "contrast": 2, "dark_share": 4, "bright_share": 4}.items():
        assert value(registry, "rankcal_input_reference_images", statistic=statistic) == images
    dark = np.zeros((2, 4, 4, 1), np.uint8)  # mean 0, all pixels dark
    bright = np.full((1, 4, 4, 1), 255, np.uint8)  # mean 1, all bright
    m.record_inputs(input_statistics(np.concatenate([dark, bright])))
    counts = {
        (s, b): value(registry, "rankcal_input_bin_total", statistic=s, bin=b)
        for s in ("mean", "dark_share", "bright_share")
        for b in ("0.5", "1.0")
    }
    assert counts == {
        ("mean", "0.5"): 2,  # 0 falls in the first bin (0, 0.5], as bin_counts clips
        ("mean", "1.0"): 1,
        ("dark_share", "0.5"): 1,
        ("dark_share", "1.0"): 2,
        ("bright_share", "0.5"): 2,
        ("bright_share", "1.0"): 1,
    }
    m.record_inputs(input_statistics(np.zeros((0, 4, 4, 1), np.uint8)))  # none answered
    m.record_inputs(None)
    assert value(registry, "rankcal_input_bin_total", statistic="mean", bin="0.5") == 2


def test_the_feature_norm_rank_is_counted_beside_the_input_statistics(registry) -> None:
    """Deciles 0, 1, ..., 10 of the training norms; counts per tenth of the rank."""
    features = FeatureReference(quantiles=[float(q) for q in range(11)], counts=[1] * 9 + [3])
    card = dataclasses.replace(input_card(), feature_reference=features)
    m = ServiceMetrics(card, window=10, provider=CPU, registry=registry)
    fraction = {
        b: value(registry, "rankcal_input_reference_ratio", statistic="feature_norm", bin=b)
        for b in ("0.1", "0.5", "1.0")
    }
    assert fraction == {"0.1": 1 / 12, "0.5": 1 / 12, "1.0": 3 / 12}
    assert value(registry, "rankcal_input_reference_images", statistic="feature_norm") == 12
    # Norms 0.5 and 0 (ranks 0.05, 0: first tenth), 4.5 (0.45: fifth), 99 (1: last).
    ranks = norm_rank(np.array([0.5, 0.0, 4.5, 99.0]), features.quantiles)
    np.testing.assert_allclose(ranks, [0.05, 0.0, 0.45, 1.0])
    stats = input_statistics(np.zeros((4, 4, 4, 1), np.uint8)) | {"feature_norm": ranks}
    m.record_inputs(stats)
    counts = {
        b: value(registry, "rankcal_input_bin_total", statistic="feature_norm", bin=b)
        for b in ("0.1", "0.2", "0.5", "1.0")
    }
    assert counts == {"0.1": 2, "0.2": 0, "0.5": 1, "1.0": 1}
    assert value(registry, "rankcal_input_bin_total", statistic="mean", bin="0.5") == 4
    # Without the pixel statistics' reference, the feature norm alone is still counted.
    other = CollectorRegistry()
    alone = dataclasses.replace(make_card(), feature_reference=features)
    ServiceMetrics(alone, window=10, provider=CPU, registry=other).record_inputs(stats)
    assert value(other, "rankcal_input_bin_total", statistic="feature_norm", bin="0.1") == 2
    assert value(other, "rankcal_input_bin_total", statistic="mean", bin="0.1") is None


def test_a_card_without_input_reference_exports_no_input_series(metrics, registry) -> None:
    metrics.record_inputs(input_statistics(np.zeros((2, 4, 4, 1), np.uint8)))
    names = {s.name for f in registry.collect() for s in f.samples}
    assert not any(name.startswith("rankcal_input") for name in names)
    assert "rankcal_confidence_count" in names


def test_feedback_counts_outcomes_and_confidence_sums_per_bin(
    metrics: ServiceMetrics, registry: CollectorRegistry
) -> None:
    """Bins (0, 0.5] (0.5, 0.9] (0.9, 0.99] (0.99, 1]: 0.4 right, 0.6 wrong, 0.9 right,
    0.95 wrong, 0.95 right. By hand: realized accuracy 3/5; per bin (correct, confidence sum)
    (1, 0.4), (1, 1.5), (1, 1.9), (0, 0), so the realized ECE is
    (|1 - 0.4| + |1 - 1.5| + |1 - 1.9|) / 5 = 2.0 / 5 = 0.4."""
    conf = np.array([0.4, 0.6, 0.9, 0.95, 0.95])
    metrics.record_feedback(conf, np.array([True, False, True, False, True]))
    correct = {
        le: value(registry, "rankcal_feedback_labels_total", bin=le, outcome="correct") for le in LE
    }
    wrong = {
        le: value(registry, "rankcal_feedback_labels_total", bin=le, outcome="wrong") for le in LE
    }
    sums = {le: value(registry, "rankcal_feedback_confidence_total", bin=le) for le in LE}
    assert correct == {"0.5": 1, "0.9": 1, "0.99": 1, "1.0": 0}
    assert wrong == {"0.5": 0, "0.9": 1, "0.99": 1, "1.0": 0}
    assert sums == pytest.approx({"0.5": 0.4, "0.9": 1.5, "0.99": 1.9, "1.0": 0.0})
    labels = sum(correct.values()) + sum(wrong.values())
    assert sum(correct.values()) / labels == 0.6
    ece = sum(abs(correct[le] - sums[le]) for le in LE) / labels
    assert ece == pytest.approx(0.4)
    # nothing else moved: feedback is not traffic
    assert value(registry, "rankcal_confidence_count") == 0


def test_feedback_refusals_are_counted_by_known_reason_only(
    metrics: ServiceMetrics, registry: CollectorRegistry
) -> None:
    assert value(registry, "rankcal_feedback_refused_total", reason="forged") == 0
    metrics.record_feedback_refusal("forged")
    assert value(registry, "rankcal_feedback_refused_total", reason="forged") == 1
    with pytest.raises(ValueError, match="unknown feedback refusal reason"):
        metrics.record_feedback_refusal("because")
    with pytest.raises(ValueError, match="correct bool"):
        metrics.record_feedback(np.array([0.5]), np.array([1]))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        metrics.record_feedback(np.array([1.5]), np.array([True]))
    assert value(registry, "rankcal_feedback_labels_total", bin="1.0", outcome="correct") == 0
