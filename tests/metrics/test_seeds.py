"""Statistics over seeds, against numbers computed by hand."""

from __future__ import annotations

import math

import pytest

from pipeline.metrics.seeds import paired_difference, spread


def test_spread_is_the_mean_and_the_sample_standard_deviation() -> None:
    three = spread([1.0, 2.0, 3.0])
    assert (three.mean, three.std, three.n) == (2.0, 1.0, 3)  # sqrt(((-1)^2 + 0 + 1^2) / 2)
    one = spread([4.5])
    assert one.mean == 4.5 and math.isnan(one.std)
    with pytest.raises(ValueError, match="no values"):
        spread([])


def test_paired_difference_is_a_t_interval_over_seed_by_seed_differences() -> None:
    """d = [2, 3, 4]: mean 3, std 1, t(0.975, 2) = 4.3027, half-width 4.3027 / sqrt(3) = 2.4842."""
    diff = paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert diff.mean == pytest.approx(3.0)
    assert (diff.low, diff.high) == pytest.approx((0.5158, 5.4842), abs=1e-4)
    assert diff.excludes_zero and diff.n == 3
    # the same rows far apart in mean, but with differences that do not keep a sign: noise
    noisy = paired_difference([10.0, 0.0, 5.0], [5.0, 5.0, 5.0])
    assert noisy.mean == 0.0 and noisy.low < 0 < noisy.high and not noisy.excludes_zero


def test_one_pair_has_no_interval_and_unpaired_input_is_refused() -> None:
    one = paired_difference([2.0], [0.5])
    assert one.mean == 1.5 and math.isnan(one.low) and math.isnan(one.high)
    assert not one.excludes_zero
    with pytest.raises(ValueError, match="equally many"):
        paired_difference([1.0, 2.0], [1.0])
