"""Binning, PSI and KS of confidence distributions, checked on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.drift import PSI_EPSILON, bin_counts, check_edges, ks_statistic, psi


def test_bin_counts_follow_prometheus_le_buckets() -> None:
    edges = [0.0, 0.5, 0.9, 1.0]
    # 0.5 belongs to (0, 0.5]; 0.9 to (0.5, 0.9]; 0.0 to the first bin; 1.0 to the last.
    conf = np.array([0.0, 0.2, 0.5, 0.50001, 0.9, 0.95, 1.0])
    assert bin_counts(conf, edges).tolist() == [3, 2, 2]


def test_bin_counts_agree_with_cumulative_le_counts() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=1000)
    edges = [0.0, 0.1, 0.3, 0.7, 0.9, 0.99, 1.0]
    cumulative = np.cumsum(bin_counts(conf, edges))
    assert cumulative.tolist() == [int((conf <= e).sum()) for e in edges[1:]]


def test_psi_hand_computed() -> None:
    # p = (0.5, 0.5), q = (0.25, 0.75)
    expected = (0.5 - 0.25) * math.log((0.5 + PSI_EPSILON) / (0.25 + PSI_EPSILON)) + (
        0.5 - 0.75
    ) * math.log((0.5 + PSI_EPSILON) / (0.75 + PSI_EPSILON))
    assert psi([2, 2], [1, 3]) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.2747, abs=1e-3)
    assert psi([5, 7, 0], [10, 14, 0]) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_disjoint_supports_is_large_but_finite() -> None:
    value = psi([10, 0], [0, 10])
    assert math.isfinite(value) and value > 10


def test_ks_hand_computed() -> None:
    # CDFs (0.5, 1.0) and (0.25, 1.0): distance 0.25
    assert ks_statistic([2, 2], [1, 3]) == pytest.approx(0.25)
    assert ks_statistic([1, 0, 0], [0, 0, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([0.0], "at least two"),
        ([0.0, 0.5, 0.5, 1.0], "strictly increasing"),
        ([0.0, 0.9], "from 0 to 1"),
    ],
)
def test_bad_edges(edges: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_edges(edges)


def test_bad_counts() -> None:
    with pytest.raises(ValueError, match="empty"):
        psi([0, 0], [1, 1])
    with pytest.raises(ValueError, match="bins"):
        ks_statistic([1, 1, 1], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        psi([-1, 2], [1, 1])
