"""Temperature scaling: softmax by hand, NLL and ECE-grid fits on synthetic logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.calibration import (
    TemperatureFit,
    ece_grid,
    estimated_accuracy,
    fit_temperature,
    fit_temperature_ece_grid,
    fit_temperature_nll,
    softmax,
    temperature_nll,
)
from pipeline.metrics.calibration import expected_calibration_error


def calibrated(n: int = 20_000, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z), so softmax(z) is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, k))
    labels = np.argmax(z + rng.gumbel(size=(n, k)), axis=1)  # Gumbel-max: y ~ softmax(z)
    return z, labels


def test_softmax_by_hand() -> None:
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(3.0)])), [0.25, 0.75])
    # T = 2 → logits [0, ln(3)/2] → weights [1, √3].
    root3 = math.sqrt(3.0)
    expected = [1 / (1 + root3), root3 / (1 + root3)]
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(3.0)]), 2.0), expected)


def test_softmax_is_stable_and_float64() -> None:
    probs = softmax(np.array([[1000.0, 1000.0 + math.log(3.0)], [-1e4, -1e4]], dtype=np.float32))
    assert probs.dtype == np.float64
    np.testing.assert_allclose(probs, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-4)
    np.testing.assert_allclose(softmax(np.ones((3, 4)) * 7, 0.05).sum(axis=1), 1.0)


def test_overconfident_logits_give_temperature_three() -> None:
    z, labels = calibrated()
    t = fit_temperature_nll(3.0 * z, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    assert temperature_nll(3.0 * z, labels, t) <= temperature_nll(3.0 * z, labels)


def test_calibrated_logits_give_temperature_one() -> None:
    z, labels = calibrated(seed=1)
    assert fit_temperature_nll(z, labels) == pytest.approx(1.0, rel=0.05)


def test_nll_fit_is_a_stationary_point() -> None:
    # d NLL / d(1/T) = mean_i (E_{softmax(z_i/T)}[z_i] − z_{i,y_i}) vanishes at the optimum.
    z, labels = calibrated(n=3000, k=5, seed=2)
    z = 1.7 * z
    t = fit_temperature_nll(z, labels)
    grad = np.mean((softmax(z, t) * z).sum(axis=1) - z[np.arange(len(z)), labels])
    assert abs(grad) < 1e-6
    for factor in (1 - 1e-4, 1 + 1e-4):
        assert temperature_nll(z, labels, t) < temperature_nll(z, labels, t * factor)


def test_nll_fit_stops_at_the_bound_for_separable_data() -> None:
    z = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, -1.0]])
    labels = np.array([0, 1, 0])
    assert fit_temperature_nll(z, labels) == 0.05
    assert fit_temperature_nll(z, labels, bounds=(0.5, 2.0)) == 0.5
    assert fit_temperature_nll(-z, labels, bounds=(0.5, 2.0)) == 2.0


def test_ece_grid_picks_the_brute_force_minimum() -> None:
    z, labels = calibrated(n=5000, seed=3)
    logits = 3.0 * z
    t = fit_temperature_ece_grid(logits, labels)
    grid = np.round(np.arange(0.1, 10.01, 0.1), 2)
    np.testing.assert_array_equal(ece_grid(), grid)
    assert len(grid) == 100 and grid[0] == 0.1 and grid[-1] == 10.0
    eces = [expected_calibration_error(softmax(logits, g), labels) for g in grid]
    assert t in grid.tolist()
    assert t == grid[int(np.argmin(eces))]
    assert t == pytest.approx(3.0, rel=0.15)


def test_ece_grid_ties_go_to_the_first_value() -> None:
    # Equal logits: every temperature gives the same uniform probabilities, hence the same ECE.
    logits = np.zeros((20, 4))
    labels = np.arange(20) % 4
    assert fit_temperature_ece_grid(logits, labels) == 0.1
    assert fit_temperature_ece_grid(logits, labels, grid=np.array([2.5, 1.0, 2.5])) == 2.5


def test_fit_temperature_reports_both_choices() -> None:
    z, labels = calibrated(n=5000, seed=4)
    fit = fit_temperature(3.0 * z, labels)
    assert isinstance(fit, TemperatureFit) and fit.method == "nll"
    assert fit.temperature == fit_temperature_nll(3.0 * z, labels)
    assert fit.ece_grid_temperature == fit_temperature_ece_grid(3.0 * z, labels)
    assert fit.nll_after < fit.nll_before
    assert fit.nll_before == pytest.approx(temperature_nll(3.0 * z, labels))
    with pytest.raises(AttributeError):
        fit.temperature = 1.0  # type: ignore[misc]


def test_estimated_accuracy_matches_accuracy_when_calibrated() -> None:
    z, labels = calibrated(seed=5)
    probs = softmax(z)
    accuracy = float(np.mean(probs.argmax(axis=1) == labels))
    assert estimated_accuracy(probs) == pytest.approx(accuracy, abs=0.015)
    assert estimated_accuracy(np.array([[0.2, 0.8], [0.6, 0.4]])) == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (np.zeros(4), np.zeros(4, dtype=int), r"logits must be \(n, K\).*\(4,\)"),
        (np.zeros((4, 3)), np.zeros(5, dtype=int), r"labels must have shape \(4,\).*\(5,\)"),
        (np.zeros((4, 3)), np.zeros((4, 1), dtype=int), r"labels.*\(4, 1\)"),
        (np.zeros((2, 3)), np.array([0, 3]), r"labels must lie in \[0, 3\).*0 to 3"),
        (np.zeros((2, 3)), np.array([-1, 2]), r"labels must lie in \[0, 3\).*-1 to 2"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), r"labels must be integers.*float64"),
        (np.array([[0.0, np.nan]]), np.array([0]), r"logits must be finite"),
    ],
)
def test_invalid_inputs_are_named(logits: np.ndarray, labels: np.ndarray, message: str) -> None:
    for fit in (fit_temperature_nll, fit_temperature_ece_grid, fit_temperature):
        with pytest.raises(ValueError, match=message):
            fit(logits, labels)


def test_invalid_temperatures_and_options_are_named() -> None:
    z, labels = np.zeros((2, 3)), np.array([0, 1])
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=f"temperature.*got {bad}"):
            softmax(z, bad)
    with pytest.raises(ValueError, match=r"bounds.*\(2\.0, 1\.0\)"):
        fit_temperature_nll(z, labels, bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"grid.*-1"):
        fit_temperature_ece_grid(z, labels, grid=np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"n_bins.*0"):
        fit_temperature_ece_grid(z, labels, n_bins=0)
    with pytest.raises(ValueError, match=r"probs.*\(3,\)"):
        estimated_accuracy(np.ones(3))


def test_a_validation_split_without_error_keeps_the_models_own_temperature() -> None:
    """All right: the NLL wants T -> 0 (the bound); that says nothing of T, so 1.0 stays."""
    labels = np.array([0, 1, 2, 0])
    z = np.eye(3)[labels] * 2.0  # every row right, with a modest margin
    fit = fit_temperature(z, labels)
    assert fit_temperature_nll(z, labels) == 0.05  # what the plain fit would serve
    assert fit.temperature == 1.0 and fit.method.startswith("none")
    assert fit.nll_after == fit.nll_before
    # one error: a minimum exists again, and it is fitted
    wrong = np.array([0, 1, 2, 1])
    refit = fit_temperature(z, wrong)
    assert refit.method == "nll" and refit.temperature > 1.0
