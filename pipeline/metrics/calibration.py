"""Calibration metrics on predicted probabilities. Pure numpy.

References:
    Naeini et al., "Obtaining Well Calibrated Probabilities Using Bayesian Binning", AAAI 2015;
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
"""

from __future__ import annotations

import numpy as np


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE on the top-1 confidence with equal-width bins, a bin holding ``lo < conf <= hi``.

    ``Σ_b (n_b / n) · |acc_b − conf_b|``, as the official RankMixup evaluation computes it.

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of bins on [0, 1].

    Returns:
        ECE as a fraction (multiply by 100 for the paper's tables).

    References:
        Guo et al., ICML 2017, Eq. 3.
    """
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(
            f"probs must be (n, K) matching labels (n,), got {probs.shape} and {labels.shape}"
        )
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins: conf in (lo, hi]; a confidence of exactly 0 cannot occur with softmax.
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
            total += in_bin.mean() * gap
    return float(total)
