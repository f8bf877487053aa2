"""The size of the model's penultimate features: a drift statistic pixel statistics cannot see.

A rotated image has the intensities of the upright one, so the four input statistics
(:mod:`pipeline.input_stats`) miss a rotation entirely, while the model's estimated accuracy is
then 39 points off at 30 degrees (``docs/serving.md``). The L2 norm of the features the
classifier's last linear layer reads tends to be smaller for inputs unlike the training images
(the network finds less of what it learned to see), and its distribution moves under rotation,
noise and inversion alike (the evaluation's shift study, ``metrics/eval.json`` ``shift``: PSI
1.30 at 30 degrees, where the input statistics give 0.05).

The exported ONNX graph returns the norm of each image as its ``feature_norm`` output
(:mod:`pipeline.export`). To be counted like the input statistics, on the same bins and by the
same Prometheus rules, each norm is mapped to its rank among the training images' norms
(:func:`norm_rank`, the training split's empirical CDF interpolated between its deciles), a
value in [0, 1]; a training image falls in each tenth of [0, 1] with probability 0.1, and a
shift that shrinks or grows the norms piles its images into the outer tenths.

NumPy only: the service computes the ranks for every prediction.

References:
    Rabanser et al., "Failing Loudly: An Empirical Study of Methods for Detecting Dataset
    Shift", NeurIPS 2019 (univariate tests on a network's representation as shift detectors);
    Dhamija et al., "Reducing Network Agnostophobia", NeurIPS 2018 (deep features of unknown
    inputs tend to have smaller magnitudes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.drift import bin_counts

STATISTIC = "feature_norm"
# Deciles: ten bins of a tenth of the training images each, like the input statistics' ten.
LEVELS = tuple(float(q) for q in np.linspace(0.0, 1.0, 11))


def check_quantiles(quantiles: Sequence[float]) -> np.ndarray:
    """Validate the training norms at :data:`LEVELS`: finite, non-negative, strictly increasing.

    Raises:
        ValueError: Naming what is wrong.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    if q.shape != (len(LEVELS),):
        raise ValueError(f"need {len(LEVELS)} quantiles (deciles), got {list(quantiles)}")
    if not np.all(np.isfinite(q)) or q[0] < 0:
        raise ValueError(f"quantiles must be finite and >= 0, got {list(quantiles)}")
    if not np.all(np.diff(q) > 0):
        raise ValueError(f"quantiles must be strictly increasing, got {list(quantiles)}")
    return q


def norm_rank(norms: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Each norm's rank in [0, 1] among the training norms whose deciles are ``quantiles``.

    Linear between deciles; 0 at or below the smallest training norm, 1 at or above the largest.

    Args:
        norms: Feature norms, shape (N,).
        quantiles: The training norms at :data:`LEVELS` (:func:`reference`).

    Returns:
        float64, shape (N,).
    """
    q = check_quantiles(quantiles)
    return np.interp(np.asarray(norms, dtype=np.float64), q, LEVELS)


def reference(norms: np.ndarray, edges: Sequence[float]) -> dict[str, list[float] | list[int]]:
    """The training split's deciles of ``norms`` and the counts of their ranks in ``edges``' bins.

    Args:
        norms: Feature norms of the training images, shape (N,), N >= 2.
        edges: The bins the ranks are counted in (:data:`pipeline.input_stats.EDGES`).

    Returns:
        ``{"quantiles": [11 floats], "counts": [len(edges) - 1 ints]}``, the model card's
        ``feature_reference``.

    Raises:
        ValueError: On fewer than two norms, non-finite ones, or deciles that are not strictly
            increasing (a network whose features barely vary has no usable statistic).
    """
    x = np.asarray(norms, dtype=np.float64).ravel()
    if x.size < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"need at least two finite feature norms, got {x.size}")
    quantiles = np.quantile(x, LEVELS)
    check_quantiles(quantiles)
    counts = bin_counts(norm_rank(x, quantiles), edges)
    return {"quantiles": [float(v) for v in quantiles], "counts": counts.tolist()}
