"""Statistics over training seeds: mean and spread of a metric, and paired differences.

A study row trained with seeds ``s1..sn`` is compared with the baseline trained with the same
seeds on the same split: the seed-by-seed differences cancel what the seed does to both (the
initialisation, the batch order), so their interval is narrower than the two rows' spreads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (``ddof=1``; NaN for one value) of ``n`` values."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """Mean of seed-by-seed differences ``a - b`` and its Student-t confidence interval.

    Attributes:
        mean: Mean difference.
        low: Lower bound (NaN with fewer than two pairs: no interval from one pair).
        high: Upper bound (NaN likewise).
        n: Number of pairs.
    """

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of zero: a difference beyond noise."""
        return bool(self.low > 0 or self.high < 0)


def spread(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation of ``values`` (one per seed)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("spread of no values")
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return Spread(float(array.mean()), std, int(array.size))


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    """Mean difference ``a - b`` over pairs (same seed) and its t interval.

    With ``d_i = a_i - b_i``: ``mean(d) ± t_{n-1} * std(d, ddof=1) / sqrt(n)``. Few seeds give
    wide intervals (t = 4.30 for 3 pairs at 95%): that width is the honest uncertainty.

    Args:
        a: Metric of the compared row, one value per seed.
        b: The baseline's metric for the same seeds, in the same order.
        confidence: Coverage of the interval.

    Returns:
        The mean difference and its interval.

    Raises:
        ValueError: If the sequences differ in length or are empty.

    References:
        Student 1908, "The probable error of a mean" (the paired t interval).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need equally many paired values, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(d.mean())
    if d.size < 2:
        return PairedDifference(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return PairedDifference(mean, mean - half, mean + half, int(d.size))
