"""Binning, PSI and KS of confidence distributions, checked on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.drift import (
    PSI_EPSILON,
    bin_counts,
    check_edges,
    ks_statistic,
    psi,
    psi_excess,
    sampling_psi,
)


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


def test_sampling_psi_hand_computed() -> None:
    # 3 of the 4 reference bins filled, m = 10 reference values, n = 20 observed:
    # (3 - 1) x (1/20 + 1/10) = 0.3
    assert sampling_psi([2, 0, 3, 5], 20) == pytest.approx(0.3)
    # observed [4, 0, 6, 10] has the reference's fractions: PSI 0, excess -0.3
    assert psi_excess([4, 0, 6, 10], [2, 0, 3, 5]) == pytest.approx(-0.3)
    # observed [10, 0, 5, 5]: PSI 0.1 ln(0.5001/0.2001) + (-0.05) ln(0.2501/0.3001)
    # + (-0.25) ln(0.2501/0.5001) = 0.26655..., less 0.3
    expected = (
        0.3 * math.log(0.5001 / 0.2001)
        - 0.05 * math.log(0.2501 / 0.3001)
        - 0.25 * math.log(0.2501 / 0.5001)
    )
    assert psi_excess([10, 0, 5, 5], [2, 0, 3, 5]) == pytest.approx(expected - 0.3)


def test_sampling_psi_is_what_two_samples_of_one_distribution_show() -> None:
    """The mean PSI of 2,000 pairs of samples (n = 300 observed, m = 360 reference) drawn from
    one 6-bin distribution is the formula's (k - 1)(1/n + 1/m) within 5%, and the excess is
    centred on 0. With sparse bins (shares down to 1%, about 1 value expected per sample) the
    smoothed PSI runs above the formula, as sampling_psi's docstring says."""
    rng = np.random.default_rng(0)

    def draws(q: np.ndarray, n: int, m: int) -> tuple[float, float]:
        pairs = [(rng.multinomial(n, q), rng.multinomial(m, q)) for _ in range(2000)]
        return (
            float(np.mean([psi(o, r) for o, r in pairs])),
            float(np.mean([psi_excess(o, r) for o, r in pairs])),
        )

    filled = np.array([0.1, 0.1, 0.2, 0.2, 0.2, 0.2])
    mean, excess = draws(filled, 300, 360)
    expected = 5 * (1 / 300 + 1 / 360)  # 0.0306
    assert mean == pytest.approx(expected, rel=0.05)
    assert abs(excess) < 0.05 * expected
    sparse = np.array([0.01, 0.02, 0.03, 0.04, 0.1, 0.2, 0.25, 0.35])
    mean, excess = draws(sparse, 100, 120)
    assert mean > 7 * (1 / 100 + 1 / 120)  # 0.128: the formula is a floor here
    assert 0 < excess < 0.1


def test_sampling_psi_refuses_empty_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        sampling_psi([0, 0], 10)
    with pytest.raises(ValueError, match="observed_size"):
        sampling_psi([1, 2], 0)
