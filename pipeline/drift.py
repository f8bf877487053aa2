"""Drift of a confidence distribution against a reference: binning, PSI and KS on binned counts.

NumPy only, because the evaluate stage (which stores the reference) and the service (which
compares live traffic with it) must bin and score confidences identically. Bins follow the
Prometheus histogram convention ``lo < c <= hi`` (the first bin also holds ``c == edges[0]``), so
the service's ``le`` buckets and the stored reference count exactly the same values.

References:
    Yurdakul 2018, "Statistical Properties of Population Stability Index" (PSI and its usual
    0.1 / 0.25 thresholds); Massey 1951, "The Kolmogorov-Smirnov Test for Goodness of Fit".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Added to both distributions' bin fractions so an empty bin gives a large but finite PSI term.
PSI_EPSILON = 1e-4


def check_edges(edges: Sequence[float]) -> np.ndarray:
    """Validate histogram edges on [0, 1]: at least two, strictly increasing, from 0 to 1.

    Raises:
        ValueError: Naming what is wrong with ``edges``.
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"need at least two bin edges, got {list(edges)}")
    if not np.all(np.diff(e) > 0):
        raise ValueError(f"bin edges must be strictly increasing, got {list(edges)}")
    if e[0] != 0.0 or e[-1] != 1.0:
        raise ValueError(f"bin edges must run from 0 to 1, got {e[0]} .. {e[-1]}")
    return e


def bin_index(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The bin ``(edges[i], edges[i + 1]]`` of each value (clipped to [0, 1]), flattened.

    Args:
        values: Values in [0, 1], any shape.
        edges: Bin edges as accepted by :func:`check_edges`.

    Returns:
        Integer bin indices in ``0 .. len(edges) - 2``, one per value.
    """
    e = check_edges(edges)
    c = np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, 1.0)
    # side="left" puts c == hi into the bin ending at hi, as Prometheus' le buckets do.
    return np.clip(np.searchsorted(e, c, side="left") - 1, 0, e.size - 2)


def bin_counts(confidence: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Count confidences per bin ``(edges[i], edges[i + 1]]``; values are clipped to [0, 1].

    Args:
        confidence: Values in [0, 1], any shape.
        edges: Bin edges as accepted by :func:`check_edges`.

    Returns:
        Integer counts, one per bin (``len(edges) - 1``).
    """
    n_bins = len(edges) - 1
    return np.bincount(bin_index(confidence, edges), minlength=n_bins).astype(np.int64)


def _fractions(counts: np.ndarray | Sequence[float], what: str) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError(f"{what} must be a 1-D array of non-negative counts")
    total = c.sum()
    if total <= 0:
        raise ValueError(f"{what} is empty")
    return c / total


def psi(observed: np.ndarray | Sequence[float], reference: np.ndarray | Sequence[float]) -> float:
    """Population stability index ``sum((p - q) * ln((p + eps) / (q + eps)))`` over bins.

    Args:
        observed: Counts of the window being checked.
        reference: Counts of the reference distribution over the same bins.

    Returns:
        PSI >= 0; by convention < 0.1 is stable, 0.1-0.25 moderate, > 0.25 significant drift.

    Raises:
        ValueError: If the two disagree in length or either is empty.
    """
    p, q = _fractions(observed, "observed"), _fractions(reference, "reference")
    if p.shape != q.shape:
        raise ValueError(f"observed has {p.size} bins, reference {q.size}")
    return float(np.sum((p - q) * np.log((p + PSI_EPSILON) / (q + PSI_EPSILON))))


def ks_statistic(
    observed: np.ndarray | Sequence[float], reference: np.ndarray | Sequence[float]
) -> float:
    """Kolmogorov-Smirnov distance between two binned distributions: max |CDF_p - CDF_q|.

    Evaluated at the bin edges only, so it is a lower bound of the KS distance of the raw values;
    finer bins near 1 (where a calibrated model's confidences crowd) tighten it.
    """
    p, q = _fractions(observed, "observed"), _fractions(reference, "reference")
    if p.shape != q.shape:
        raise ValueError(f"observed has {p.size} bins, reference {q.size}")
    return float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))


def sampling_psi(reference: np.ndarray | Sequence[float], observed_size: float) -> float:
    """The PSI two samples of one distribution show by chance alone: ``(k - 1) (1/n + 1/m)``.

    For ``n`` observed and ``m`` reference values drawn from the same distribution over ``k``
    bins, ``PSI / (1/n + 1/m)`` tends to a chi-squared variable with ``k - 1`` degrees of freedom
    (Yurdakul 2018), so this is its expected value. ``k`` counts the bins the reference fills:
    a bin it leaves empty carries no sampling term of its own (a live value there is read as
    drift, which is what it is when the reference is large). The service's recording rules
    compute the same (``rankcal:psi_excess:5m``, ``rankcal:input_psi_excess:5m``).

    The limit holds where every filled bin expects several values in both samples; where some
    expect about one, the smoothed PSI (:data:`PSI_EPSILON`) runs above it (8 bins with shares
    down to 1%, n = 100, m = 120: 0.18 on average against 0.13), so the correction is then a
    floor of the sampling noise, not all of it.

    Args:
        reference: Counts of the reference over the bins (its total is ``m``).
        observed_size: ``n``, the number of values the observed histogram holds.

    Returns:
        The expected PSI of an observed sample of that size, drift-free.

    Raises:
        ValueError: An empty reference or a non-positive ``observed_size``.

    References:
        Yurdakul 2018, "Statistical Properties of Population Stability Index", section 3.
    """
    counts = np.asarray(reference, dtype=np.float64)
    _fractions(counts, "reference")
    if not observed_size > 0:
        raise ValueError(f"observed_size must be positive, got {observed_size}")
    filled = int(np.count_nonzero(counts))
    return float((filled - 1) * (1.0 / observed_size + 1.0 / counts.sum()))


def psi_excess(
    observed: np.ndarray | Sequence[float], reference: np.ndarray | Sequence[float]
) -> float:
    """:func:`psi` less :func:`sampling_psi`: the drift beyond what the two sizes explain.

    Negative when the two agree better than sampling alone would have it.
    """
    total = float(np.sum(np.asarray(observed, dtype=np.float64)))
    return psi(observed, reference) - sampling_psi(reference, total)
