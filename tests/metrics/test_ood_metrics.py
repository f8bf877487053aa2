"""OOD scores and detection metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from pipeline.metrics.ood import (
    detection_metrics,
    energy,
    entropy,
    max_softmax,
    ood_report,
    roc_points,
    threshold_at_tpr,
)


def test_uniform_logits_by_hand() -> None:
    z = np.full((3, 4), 2.0)  # K = 4, every logit 2
    np.testing.assert_allclose(max_softmax(z), 0.25)
    np.testing.assert_allclose(entropy(z), math.log(4))
    np.testing.assert_allclose(entropy(z, normalize=True), 1.0)
    np.testing.assert_allclose(energy(z), -math.log(4) - 2.0)  # −logsumexp = −(ln 4 + z)
    np.testing.assert_allclose(energy(z, temperature=2.0), -2.0 * math.log(4) - 2.0)


def test_scores_are_stable_for_huge_logits() -> None:
    z = np.array([[1000.0, 0.0, -1000.0], [0.5, 0.5, -1e4]])
    np.testing.assert_allclose(max_softmax(z), [1.0, 0.5])
    np.testing.assert_allclose(energy(z), [-1000.0, -(0.5 + math.log(2))])
    np.testing.assert_allclose(entropy(z), [0.0, math.log(2)], atol=1e-12)


def test_scores_match_scipy_on_random_logits() -> None:
    z = np.random.default_rng(0).normal(size=(50, 7)) * 3
    p = softmax(z, axis=1)
    np.testing.assert_allclose(max_softmax(z), p.max(axis=1))
    np.testing.assert_allclose(entropy(z), -(p * np.log(p)).sum(axis=1))
    np.testing.assert_allclose(energy(z, 0.5), -0.5 * logsumexp(z / 0.5, axis=1))


def test_threshold_and_fpr95_by_hand() -> None:
    id_scores = np.arange(1.0, 21.0)  # 20 ID scores; 95% of them = 19 must stay >= threshold
    assert threshold_at_tpr(id_scores, 0.95) == 2.0
    assert threshold_at_tpr(np.arange(1.0, 11.0), 0.95) == 1.0  # ceil(9.5) = 10 -> all kept
    assert threshold_at_tpr(id_scores, 1.0) == 1.0
    # OOD at or above 2: {2, 3, 10} of 5 -> FPR95 = 60%.
    metrics = detection_metrics(id_scores, np.array([0.0, 1.5, 2.0, 3.0, 10.0]))
    assert metrics["fpr95"] == pytest.approx(60.0)


def test_detection_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    id_scores, ood_scores = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[id_scores, ood_scores]
    metrics = detection_metrics(id_scores, ood_scores)
    assert metrics["auroc"] == pytest.approx(100 * roc_auc_score(y, s))
    assert metrics["aupr_in"] == pytest.approx(100 * average_precision_score(y, s))
    assert metrics["aupr_out"] == pytest.approx(100 * average_precision_score(1 - y, -s))
    assert metrics["fpr95"] == pytest.approx(100 * np.mean(ood_scores >= np.sort(id_scores)[15]))


def test_report_orients_every_score_towards_id() -> None:
    rng = np.random.default_rng(2)
    id_z = rng.normal(size=(200, 5)) + 3.0 * np.eye(5)[rng.integers(0, 5, 200)]
    ood_z = rng.normal(size=(150, 5))
    y = np.r_[np.ones(200), np.zeros(150)]
    z = np.r_[id_z, ood_z]
    p = softmax(z, axis=1)
    independent = {
        "msp": p.max(axis=1),
        "entropy": (p * np.log(p)).sum(axis=1),  # negated entropy
        "energy": logsumexp(z, axis=1),  # negated energy
    }
    report = ood_report(id_z, ood_z)
    assert set(report) == {"msp", "entropy", "energy"}
    for name, score in independent.items():
        assert report[name]["positive"] == "in-distribution"
        assert report[name]["auroc"] == pytest.approx(100 * roc_auc_score(y, score))
        assert report[name]["auroc"] > 70.0  # the peaked ID logits are easy to tell apart


def test_perfect_separation_and_identical_distributions() -> None:
    rng = np.random.default_rng(3)
    id_z = 20.0 * np.eye(4)[rng.integers(0, 4, 100)] + rng.normal(0, 0.1, (100, 4))
    ood_z = rng.normal(0, 0.1, (80, 4))
    for metrics in ood_report(id_z, ood_z).values():
        assert metrics["auroc"] == pytest.approx(100.0)
        assert metrics["aupr_in"] == pytest.approx(100.0)
        assert metrics["aupr_out"] == pytest.approx(100.0)
        assert metrics["fpr95"] == 0.0
    same = rng.normal(size=(4000, 4))
    for metrics in ood_report(same[:2000], same[2000:]).values():
        assert metrics["auroc"] == pytest.approx(50.0, abs=3.0)
        assert metrics["fpr95"] == pytest.approx(95.0, abs=3.0)


def test_roc_points_are_monotone_and_span_the_unit_square() -> None:
    rng = np.random.default_rng(4)
    id_scores, ood_scores = rng.normal(0.5, 1.0, 3000), rng.normal(0.0, 1.0, 3000)
    fpr, tpr = roc_points(id_scores, ood_scores, max_points=50)
    assert len(fpr) == len(tpr) <= 50
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # A short curve comes back whole, exactly as scikit-learn draws it.
    small_fpr, small_tpr = roc_points(id_scores[:5], ood_scores[:5])
    y, s = np.r_[np.ones(5), np.zeros(5)], np.r_[id_scores[:5], ood_scores[:5]]
    ref_fpr, ref_tpr, _ = roc_curve(y, s)
    np.testing.assert_array_equal(small_fpr, ref_fpr)
    np.testing.assert_array_equal(small_tpr, ref_tpr)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: max_softmax(np.zeros(4)), r"logits must be \(n, K\).*got \(4,\)"),
        (lambda: energy(np.zeros((2, 3)), temperature=0.0), "temperature must be > 0, got 0.0"),
        (lambda: entropy(np.zeros((2, 1)), normalize=True), r"K >= 2.*\(2, 1\)"),
        (lambda: ood_report(np.zeros((2, 3)), np.zeros((2, 4))), r"\(2, 3\) and \(2, 4\)"),
        (lambda: ood_report(np.zeros((2, 3)), np.zeros((0, 3))), r"ood_logits.*\(0, 3\)"),
        (lambda: threshold_at_tpr(np.ones(3), 1.5), r"tpr must lie in \(0, 1\], got 1.5"),
        (lambda: threshold_at_tpr(np.ones((3, 1))), r"id_scores must be \(n,\).*\(3, 1\)"),
        (lambda: detection_metrics(np.ones(3), np.array([np.nan])), "ood_scores must be finite"),
        (lambda: roc_points(np.ones(3), np.zeros(3), max_points=1), "max_points.*got 1"),
    ],
)
def test_validation_names_what_arrived(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
