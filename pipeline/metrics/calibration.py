"""Calibration metrics on predicted probabilities. Pure numpy.

Every function takes ``probs`` (n, K), rows of class probabilities, and integer ``labels`` (n,),
and returns a fraction, except :func:`calibration_report`, which reports percentages.

References:
    Naeini et al., "Obtaining Well Calibrated Probabilities Using Bayesian Binning", AAAI 2015;
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_PROB_SLACK = 1e-6  # float32 softmax can overshoot 1 by an ulp or two
_NLL_FLOOR = 1e-12


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Per-bin statistics of the top-1 confidence: what a reliability diagram plots.

    Attributes:
        lower: Lower bin edges (n_bins,).
        upper: Upper bin edges (n_bins,).
        count: Samples per bin (n_bins,).
        accuracy: Share of correct top-1 predictions per bin; NaN for an empty bin.
        confidence: Mean top-1 confidence per bin; NaN for an empty bin.
    """

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    def __post_init__(self) -> None:
        for name in ("lower", "upper", "count", "accuracy", "confidence"):
            array = np.array(getattr(self, name))  # a read-only copy: the caller's stays writable
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @property
    def weight(self) -> np.ndarray:
        """Bin mass n_b / n (n_bins,)."""
        return self.count / self.count.sum()

    @property
    def gap(self) -> np.ndarray:
        """Signed gap conf_b − acc_b (n_bins,), positive when over-confident; NaN when empty."""
        return self.confidence - self.accuracy


def _validate(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Check the shared inputs and return them as float64 probs and int64 labels."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must be (n, K) with n, K >= 1, got {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must be (n,) = ({probs.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {probs.shape[1]}), got range [{labels.min()}, {labels.max()}]"
        )
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    probs = probs.astype(np.float64)
    if not np.isfinite(probs).all():
        raise ValueError("probs must be finite, got NaN or inf")
    lo, hi = probs.min(), probs.max()
    if lo < -_PROB_SLACK or hi > 1.0 + _PROB_SLACK:
        raise ValueError(f"probs must lie in [0, 1] (logits?), got range [{lo:.6g}, {hi:.6g}]")
    return probs, labels.astype(np.int64)


def _equal_width_index(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each value for bins ``(lo, hi]`` on [0, 1], and the n_bins + 1 edges.

    A value of exactly 0 (or a hair below) gets index 0, and one a hair above 1 the last.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, values, side="left") - 1, 0, n_bins - 1)
    return index, edges


def _bin_stats(
    index: np.ndarray, confidence: np.ndarray, hit: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, mean ``hit`` and mean ``confidence`` per bin (NaN where a bin is empty)."""
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(index, weights=hit.astype(np.float64), minlength=n_bins) / count
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
    return count, acc, mean_conf


def _equal_mass_index(confidence: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index by rank (bins hold n / n_bins samples ± 1, ties split by order) and upper edges."""
    order = np.argsort(confidence, kind="stable")
    sizes = np.array([len(part) for part in np.array_split(order, n_bins)])
    index = np.empty(len(confidence), dtype=np.int64)
    index[order] = np.repeat(np.arange(n_bins), sizes)
    # Upper edge = largest confidence in the bin; an empty bin (only when n < n_bins, and always
    # after the non-empty ones) repeats the previous bin's edge.
    upper = confidence[order][np.cumsum(sizes) - 1]
    return index, upper


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 15, *, adaptive: bool = False
) -> ReliabilityBins:
    """Bin the top-1 confidence and measure accuracy and mean confidence per bin.

    Equal-width bins split [0, 1] into ``n_bins`` intervals ``lo < conf <= hi`` (the first also
    takes a confidence of exactly 0). Equal-mass bins (``adaptive=True``) sort the samples by
    confidence and cut them into ``n_bins`` runs of n / n_bins samples ± 1; ``upper`` is the
    largest confidence in a bin and ``lower`` the previous bin's ``upper`` (0 for the first), so
    a sample satisfies ``lower <= conf <= upper`` (tied confidences may straddle two bins).

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of bins.
        adaptive: Equal-mass instead of equal-width bins.

    Returns:
        The per-bin statistics; empty bins have count 0 and NaN accuracy and confidence.

    References:
        Guo et al., ICML 2017 (reliability diagrams); Nixon et al., "Measuring Calibration in
        Deep Learning", CVPRW 2019 (equal-mass bins).
    """
    probs, labels = _validate(probs, labels, n_bins)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    if adaptive:
        index, upper = _equal_mass_index(confidence, n_bins)
        lower = np.concatenate([[0.0], upper[:-1]])
    else:
        index, edges = _equal_width_index(confidence, n_bins)
        lower, upper = edges[:-1], edges[1:]
    count, acc, mean_conf = _bin_stats(index, confidence, correct, n_bins)
    return ReliabilityBins(lower, upper, count, acc, mean_conf)


def _full_bins(bins: ReliabilityBins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mass n_b / n, mean confidence and signed gap conf_b − acc_b of the non-empty bins."""
    full = bins.count > 0
    return bins.weight[full], bins.confidence[full], bins.gap[full]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Returns the ECE of the top-1 confidence as a fraction (× 100 for the paper's tables).

    ``Σ_b (n_b / n) · |acc_b − conf_b|`` over equal-width bins ``lo < conf <= hi``, as the
    official RankMixup evaluation computes it.

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of bins on [0, 1].

    References:
        Naeini et al., AAAI 2015; Guo et al., ICML 2017, Eq. 3.
    """
    weight, _, gap = _full_bins(reliability_bins(probs, labels, n_bins))
    return float(np.sum(weight * np.abs(gap)))


def ece_interval(
    probs: np.ndarray,
    labels: np.ndarray,
    n_bins: int = 15,
    *,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """A bootstrap confidence interval of :func:`expected_calibration_error`, as fractions.

    The test images are resampled with replacement (percentile method, scipy's
    ``stats.bootstrap``); each sample keeps its bin, so every resample's ECE is computed exactly
    as the point estimate is. It says how much of an ECE difference the test set's finite size
    alone could make; seeds and training noise are another matter.

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of equal-width bins.
        level: Confidence level of the interval.
        resamples: Bootstrap resamples.
        seed: Seeds the resampling.

    References:
        Efron & Tibshirani, "An Introduction to the Bootstrap", 1993 (percentile intervals).
    """
    from scipy import stats  # only here: the service imports this module and has no SciPy

    probs, labels = _validate(probs, labels, n_bins)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index, _ = _equal_width_index(confidence, n_bins)

    def ece(bin_index: np.ndarray, conf: np.ndarray, hit: np.ndarray, axis: int = -1) -> Any:
        # Vectorised over the leading axis scipy adds: one bincount over (resample, bin).
        rows = bin_index.reshape(-1, bin_index.shape[-1]).astype(np.int64)
        offset = rows + n_bins * np.arange(len(rows))[:, None]
        size = len(rows) * n_bins
        count = np.bincount(offset.ravel(), minlength=size).reshape(len(rows), n_bins)
        conf_sum = np.bincount(offset.ravel(), conf.reshape(rows.shape).ravel(), minlength=size)
        hit_sum = np.bincount(offset.ravel(), hit.reshape(rows.shape).ravel(), minlength=size)
        gap = np.abs(conf_sum - hit_sum).reshape(len(rows), n_bins)  # n_b |conf_b - acc_b|
        out = gap.sum(axis=1) / np.maximum(count.sum(axis=1), 1)
        return out.reshape(bin_index.shape[:-1])

    result = stats.bootstrap(
        (index, confidence, correct),
        ece,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def maximum_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Returns the MCE, ``max_b |acc_b − conf_b|`` over non-empty equal-width bins, as a fraction.

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of bins on [0, 1].

    References:
        Naeini et al., AAAI 2015; Guo et al., ICML 2017, Eq. 5.
    """
    _, _, gap = _full_bins(reliability_bins(probs, labels, n_bins))
    return float(np.max(np.abs(gap)))


def adaptive_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Returns the adaptive ECE, the ECE sum over equal-mass bins, as a fraction.

    Bins are cut by rank, so each holds n / n_bins samples ± 1 even with tied confidences. (The
    official RankMixup ``AdaptiveECELoss`` cuts at interpolated quantiles with a strict lower
    edge, which leaves the lowest-confidence sample out.)

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of bins.

    References:
        Nixon et al., "Measuring Calibration in Deep Learning", CVPRW 2019.
    """
    weight, _, gap = _full_bins(reliability_bins(probs, labels, n_bins, adaptive=True))
    return float(np.sum(weight * np.abs(gap)))


def classwise_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Returns the classwise ECE, per-class ECEs on ``p[:, k]`` averaged over K, as a fraction.

    For class k, equal-width bins hold ``lo < p_k <= hi``; a bin's accuracy is the share of its
    samples labelled k, and its gap ``|acc_b − mean p_k|`` is weighted by n_b / n. As in the
    official RankMixup code, a probability of exactly 0 falls in no bin (it still counts in n).
    The mean runs over all K columns of ``probs`` (the official code uses max(label) + 1).

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of bins on [0, 1].

    References:
        Kull et al., "Beyond temperature scaling", NeurIPS 2019.
    """
    probs, labels = _validate(probs, labels, n_bins)
    n, k_classes = probs.shape
    per_class = np.empty(k_classes)
    for k in range(k_classes):
        keep = probs[:, k] > 0.0
        p_k = probs[keep, k]
        index, _ = _equal_width_index(p_k, n_bins)
        count, acc, mean_p = _bin_stats(index, p_k, labels[keep] == k, n_bins)
        full = count > 0
        per_class[k] = np.sum(count[full] / n * np.abs(acc[full] - mean_p[full]))
    return float(per_class.mean())


def overconfidence_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Returns the over-confidence error as a fraction.

    ``OE = Σ_b (n_b / n) · conf_b · max(conf_b − acc_b, 0)`` over equal-width bins.

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of bins on [0, 1].

    References:
        Thulasidasan et al., "On Mixup Training", NeurIPS 2019; Mukhoti et al., NeurIPS 2020.
    """
    weight, conf, gap = _full_bins(reliability_bins(probs, labels, n_bins))
    return float(np.sum(weight * conf * np.maximum(gap, 0.0)))


def underconfidence_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Returns the under-confidence error as a fraction.

    ``UE = Σ_b (n_b / n) · (1 − conf_b) · max(acc_b − conf_b, 0)`` over equal-width bins. (The
    official RankMixup ``UELoss`` weights the gap by ``conf_b`` instead of ``1 − conf_b``.)

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of bins on [0, 1].

    References:
        Thulasidasan et al., NeurIPS 2019; Mukhoti et al., NeurIPS 2020.
    """
    weight, conf, gap = _full_bins(reliability_bins(probs, labels, n_bins))
    return float(np.sum(weight * (1.0 - conf) * np.maximum(-gap, 0.0)))


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Returns the mean ``−log p_y`` in nats, with ``p_y`` clipped below at 1e-12.

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
    """
    probs, labels = _validate(probs, labels)
    p_true = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p_true, _NLL_FLOOR, None))))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Returns the Brier score, the sample mean of ``Σ_k (p_k − onehot_k)²``, in [0, 2].

    Convention: summed over the K classes, not divided by K.

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).

    References:
        Brier, "Verification of forecasts expressed in terms of probability", 1950.
    """
    probs, labels = _validate(probs, labels)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Returns the top-1 accuracy as a fraction (an ``argmax`` tie goes to the lowest class).

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
    """
    probs, labels = _validate(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def calibration_report(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """All the metrics above under the keys the RankMixup tables use.

    ``accuracy``, ``ece``, ``adaptive_ece``, ``classwise_ece``, ``mce``, ``oe`` and ``ue`` are in
    PERCENT (× 100, as the literature reports them); ``nll`` (nats) and ``brier`` are raw values.

    Args:
        probs: Probabilities (n, K).
        labels: True classes (n,).
        n_bins: Number of bins for every binned metric.

    Returns:
        Metric name to value.
    """
    probs, labels = _validate(probs, labels, n_bins)
    fractions = {
        "accuracy": accuracy(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "adaptive_ece": adaptive_calibration_error(probs, labels, n_bins),
        "classwise_ece": classwise_calibration_error(probs, labels, n_bins),
        "mce": maximum_calibration_error(probs, labels, n_bins),
        "oe": overconfidence_error(probs, labels, n_bins),
        "ue": underconfidence_error(probs, labels, n_bins),
    }
    report = {name: 100.0 * value for name, value in fractions.items()}
    report["nll"] = negative_log_likelihood(probs, labels)
    report["brier"] = brier_score(probs, labels)
    return report
