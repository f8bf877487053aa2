"""Calibration metrics against hand-computed values, torchmetrics and the official loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from pipeline.metrics.calibration import (
    accuracy,
    adaptive_calibration_error,
    brier_score,
    calibration_report,
    classwise_calibration_error,
    ece_interval,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    overconfidence_error,
    reliability_bins,
    underconfidence_error,
)


def _rows(confidence: float, k: int, times: int) -> np.ndarray:
    """``times`` rows with class 0 at ``confidence`` and the rest spread evenly."""
    row = np.full(k, (1.0 - confidence) / (k - 1))
    row[0] = confidence
    return np.tile(row, (times, 1))


def _random_softmax(seed: int, n: int = 1000, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * rng.uniform(0.5, 4.0, size=(n, 1))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    # Labels agree with the argmax often enough to make the bins interesting.
    labels = np.where(rng.random(n) < 0.6, probs.argmax(axis=1), rng.integers(0, k, n))
    return probs.astype(np.float32), labels.astype(np.int64)


# Two occupied bins with n_bins=2, i.e. (0, 0.5] and (0.5, 1], n = 10, K = 4:
#   low bin:  4 samples at conf 0.4, 3 correct -> acc 0.75, weight 0.4, acc − conf = +0.35
#   high bin: 6 samples at conf 0.9, 3 correct -> acc 0.50, weight 0.6, conf − acc = +0.40
#   ECE = 0.4·0.35 + 0.6·0.40                  = 0.14 + 0.24 = 0.38
#   MCE = max(0.35, 0.40)                       = 0.40
#   OE  = 0.6 · 0.9 · 0.40 (high bin only)      = 0.216
#   UE  = 0.4 · (1 − 0.4) · 0.35 (low bin only) = 0.084
TWO_BIN_PROBS = np.concatenate([_rows(0.4, 4, 4), _rows(0.9, 4, 6)])
TWO_BIN_LABELS = np.array([0, 0, 0, 1, 0, 0, 0, 1, 1, 1])  # 4 low-bin, then 6 high-bin


def test_perfectly_calibrated_set_has_zero_error() -> None:
    probs = _rows(0.8, 2, 10)  # 10 samples at confidence 0.8, 8 of them correct
    labels = np.array([0] * 8 + [1] * 2)
    for metric in (expected_calibration_error, maximum_calibration_error, overconfidence_error):
        assert metric(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert underconfidence_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # Equal-mass bins cut tied confidences by rank, so only a single bin sees the whole set.
    assert adaptive_calibration_error(probs, labels, 1) == pytest.approx(0.0, abs=1e-12)


def test_two_bin_example_by_hand() -> None:
    probs, labels = TWO_BIN_PROBS, TWO_BIN_LABELS
    bins = reliability_bins(probs, labels, n_bins=2)
    np.testing.assert_allclose(bins.lower, [0.0, 0.5])
    np.testing.assert_allclose(bins.upper, [0.5, 1.0])
    np.testing.assert_array_equal(bins.count, [4, 6])
    np.testing.assert_allclose(bins.accuracy, [0.75, 0.5])
    np.testing.assert_allclose(bins.confidence, [0.4, 0.9])
    assert expected_calibration_error(probs, labels, 2) == pytest.approx(0.38)
    assert maximum_calibration_error(probs, labels, 2) == pytest.approx(0.40)
    assert overconfidence_error(probs, labels, 2) == pytest.approx(0.216)
    assert underconfidence_error(probs, labels, 2) == pytest.approx(0.084)


def test_empty_bins_have_zero_count_and_nan_statistics() -> None:
    bins = reliability_bins(TWO_BIN_PROBS, TWO_BIN_LABELS, n_bins=10)
    assert bins.count.sum() == 10 and (bins.count > 0).sum() == 2
    assert np.isnan(bins.accuracy[bins.count == 0]).all()
    assert np.isnan(bins.confidence[bins.count == 0]).all()
    with pytest.raises(ValueError):
        bins.count[0] = 3  # read-only


def test_bin_boundary_is_right_closed() -> None:
    # A confidence of exactly 0.2 with 5 bins belongs to (0.0, 0.2], not (0.2, 0.4];
    # 0.4 to (0.2, 0.4] and 1.0 to the last bin.
    probs = np.array([[0.2] * 5, [0.4] + [0.15] * 4, [1.0, 0, 0, 0, 0]])
    bins = reliability_bins(probs, np.array([0, 0, 0]), n_bins=5)
    np.testing.assert_array_equal(bins.count, [1, 1, 0, 0, 1])


def test_adaptive_bins_hold_equal_mass() -> None:
    # Confidences 0.55, 0.60, ..., 1.00 (K = 2). Two equal-mass bins of 5:
    #   low:  mean conf 0.65, 2 of 5 correct -> gap 0.25;  high: mean conf 0.90, 5 of 5 -> gap 0.10
    #   adaptive ECE = 0.5·0.25 + 0.5·0.10 = 0.175.
    # Equal width instead puts all ten in (0.5, 1]: mean conf 0.775, acc 0.7 -> ECE 0.075.
    conf = np.linspace(0.55, 1.0, 10)
    probs = np.stack([conf, 1.0 - conf], axis=1)[::-1].copy()  # order must not matter
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 0])[::-1].copy()
    bins = reliability_bins(probs, labels, n_bins=2, adaptive=True)
    np.testing.assert_array_equal(bins.count, [5, 5])
    np.testing.assert_allclose(bins.upper, [0.75, 1.0])
    np.testing.assert_allclose(bins.lower, [0.0, 0.75])
    assert adaptive_calibration_error(probs, labels, 2) == pytest.approx(0.175)
    assert expected_calibration_error(probs, labels, 2) == pytest.approx(0.075)
    counts = reliability_bins(probs, labels, n_bins=3, adaptive=True).count
    np.testing.assert_array_equal(counts, [4, 3, 3])


def test_adaptive_bins_survive_ties_and_few_samples() -> None:
    probs = _rows(0.7, 3, 10)  # all confidences tied
    labels = np.array([0] * 6 + [1] * 4)
    bins = reliability_bins(probs, labels, n_bins=3, adaptive=True)
    np.testing.assert_array_equal(bins.count, [4, 3, 3])
    assert adaptive_calibration_error(probs, labels, 3) == pytest.approx(
        np.sum(bins.count / 10 * np.abs(bins.accuracy - 0.7))
    )
    few = reliability_bins(probs[:2], labels[:2], n_bins=5, adaptive=True)
    np.testing.assert_array_equal(few.count, [1, 1, 0, 0, 0])
    assert np.isnan(few.accuracy[2:]).all()
    assert adaptive_calibration_error(probs[:2], labels[:2], 5) == pytest.approx(0.3)


def test_classwise_ece_two_class_by_hand() -> None:
    # n_bins = 2, bins (0, 0.5] and (0.5, 1]:
    #   class 0, p0 = .8 .6 .3 .1: low {.3, .1} mean .2, share labelled 0 = 0   -> .5·.2 = .1
    #                              high {.8, .6} mean .7, share labelled 0 = .5 -> .5·.2 = .1
    #   class 1, p1 = .2 .4 .7 .9: low {.2, .4} mean .3, share labelled 1 = .5  -> .5·.2 = .1
    #                              high {.7, .9} mean .8, share labelled 1 = 1  -> .5·.2 = .1
    #   classwise ECE = mean(0.2, 0.2) = 0.2
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    labels = np.array([0, 1, 1, 1])
    assert classwise_calibration_error(probs, labels, 2) == pytest.approx(0.2)


def test_classwise_ece_drops_exact_zero_probabilities() -> None:
    # Class 0: p0 = 1, 1 with half labelled 0 -> gap .5, weight 1. Class 1: p1 = 0, 0 sit in no
    # bin (official code: conf > lower) -> 0. Mean 0.25 (0.5 if zeros joined the first bin).
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert classwise_calibration_error(probs, np.array([0, 1]), 15) == pytest.approx(0.25)


def _official_classwise(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """A literal numpy port of the official RankMixup ``ClasswiseECELoss`` loops."""
    edges = np.linspace(0, 1, n_bins + 1)
    per_class = []
    for k in range(probs.shape[1]):
        p_k, total = probs[:, k], 0.0
        for lo, hi in itertools.pairwise(edges):
            in_bin = (p_k > lo) & (p_k <= hi)
            if in_bin.mean() > 0:
                gap = abs(p_k[in_bin].mean() - (labels[in_bin] == k).mean())
                total += gap * in_bin.mean()
        per_class.append(total)
    return float(np.mean(per_class))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classwise_ece_matches_the_official_loops(seed: int) -> None:
    probs, labels = _random_softmax(seed)
    probs = probs.astype(np.float64)
    expected = _official_classwise(probs, labels, 15)
    assert classwise_calibration_error(probs, labels, 15) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_ece_and_mce_match_torchmetrics(seed: int) -> None:
    # torchmetrics bins lo <= conf < hi, we bin lo < conf <= hi; random continuous confidences
    # never sit exactly on an edge, so the two agree. Inputs are probabilities in [0, 1], so
    # torchmetrics does not softmax them again; it computes in float32, hence float32 inputs.
    probs, labels = _random_softmax(seed)
    preds, target = torch.from_numpy(probs), torch.from_numpy(labels)
    for norm, ours in (("l1", expected_calibration_error), ("max", maximum_calibration_error)):
        theirs = MulticlassCalibrationError(num_classes=10, n_bins=15, norm=norm)
        assert ours(probs, labels, 15) == pytest.approx(theirs(preds, target).item(), abs=1e-6)


def test_nll_brier_accuracy_two_samples() -> None:
    probs = np.array([[0.75, 0.25], [0.4, 0.6]])
    labels = np.array([0, 0])
    assert negative_log_likelihood(probs, labels) == pytest.approx(
        -(math.log(0.75) + math.log(0.4)) / 2
    )
    # (0.25² + 0.25²) = 0.125 and (0.6² + 0.6²) = 0.72 -> mean 0.4225 (summed over classes)
    assert brier_score(probs, labels) == pytest.approx(0.4225)
    assert accuracy(probs, labels) == pytest.approx(0.5)
    clipped = negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1]))
    assert clipped == pytest.approx(-math.log(1e-12))


def test_report_is_in_percent_except_nll_and_brier() -> None:
    probs, labels = TWO_BIN_PROBS, TWO_BIN_LABELS
    report = calibration_report(probs, labels, n_bins=2)
    assert set(report) == {
        "accuracy", "ece", "adaptive_ece", "classwise_ece", "mce", "oe", "ue", "nll", "brier",
    }  # fmt: skip
    assert report["accuracy"] == pytest.approx(60.0)
    assert report["ece"] == pytest.approx(38.0)
    assert report["mce"] == pytest.approx(40.0)
    assert report["oe"] == pytest.approx(21.6)
    assert report["ue"] == pytest.approx(8.4)
    adaptive = adaptive_calibration_error(probs, labels, 2)
    classwise = classwise_calibration_error(probs, labels, 2)
    assert report["adaptive_ece"] == pytest.approx(100 * adaptive)
    assert report["classwise_ece"] == pytest.approx(100 * classwise)
    assert report["nll"] == pytest.approx(negative_log_likelihood(probs, labels))
    assert report["brier"] == pytest.approx(brier_score(probs, labels))


@pytest.mark.parametrize(
    ("probs", "labels", "n_bins", "message"),
    [
        (np.full(5, 0.2), np.zeros(5, int), 15, r"probs must be \(n, K\).*\(5,\)"),
        (np.full((0, 3), 0.2), np.zeros(0, int), 15, r"got \(0, 3\)"),
        (np.full((4, 3), 0.2), np.zeros(5, int), 15, r"labels must be \(n,\) = \(4,\), got \(5,\)"),
        (np.full((2, 3), 0.2), np.array([0, 3]), 15, r"\[0, 3\), got range \[0, 3\]"),
        (np.full((2, 3), 0.2), np.array([0.0, 1.0]), 15, "integers, got dtype float64"),
        (np.full((2, 3), 0.2), np.array([0, 1]), 0, "n_bins must be an integer >= 1, got 0"),
        (np.full((2, 3), 2.5), np.array([0, 1]), 15, r"\[0, 1\] \(logits\?\), got range \[2.5"),
        (np.full((2, 3), np.nan), np.array([0, 1]), 15, "finite"),
    ],
)
def test_validation_names_what_arrived(
    probs: np.ndarray, labels: np.ndarray, n_bins: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        calibration_report(probs, labels, n_bins)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    logits = 1.5 * rng.normal(size=(n, 5))
    logits[np.arange(n), labels] += 1.5
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True), labels


def test_ece_interval_of_identical_samples_is_the_point() -> None:
    """Every resample of 50 copies of one sample (confidence 0.7, correct) has ECE 0.3."""
    probs = np.tile([[0.7, 0.2, 0.1]], (50, 1))
    labels = np.zeros(50, dtype=int)
    low, high = ece_interval(probs, labels, 15, resamples=200)
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)


def test_ece_interval_holds_the_estimate_and_narrows_with_more_images() -> None:
    small, large = _synthetic(400, 0), _synthetic(8000, 0)
    intervals = {}
    for name, (probs, labels) in {"small": small, "large": large}.items():
        low, high = ece_interval(probs, labels, 15, resamples=500, seed=3)
        assert low <= expected_calibration_error(probs, labels, 15) <= high
        assert (low, high) == ece_interval(probs, labels, 15, resamples=500, seed=3)  # seeded
        intervals[name] = high - low
    # the width of a bootstrap interval shrinks like 1 / sqrt(n): 20x the images, ~4.5x narrower
    assert intervals["large"] < intervals["small"] / 2.5
