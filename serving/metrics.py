"""Prometheus metrics of the rankcal service: every definition in one module.

Two kinds of series. *Aggregatable* ones (counters and the confidence histogram) sum across
workers and replicas, so the recording rules in ``serving/prometheus/`` compute service-wide
estimated accuracy, OOD ratio, PSI and KS from them. *Per-process* window gauges (series with a
``pid`` label under BentoML's multiprocess mode) score the last ``window`` predictions of one
worker with :mod:`pipeline.drift`, for logs and dashboards. Static gauges export the model card's
reference histogram and evaluation accuracy so the rules need no model-specific numbers.

Confidences, accuracies and ratios are fractions in [0, 1] (the card's percentages are divided by
100), hence the ``_ratio`` suffixes. Histogram buckets, the per-bin counter and the reference
gauges all use the card's bin edges, formatted exactly as ``prometheus_client`` formats histogram
buckets (``"0.1"``, ``"1.0"``). Only the histogram's buckets carry them as ``le`` (Prometheus
reserves that label for histograms: ``promtool check metrics`` refuses it elsewhere); the per-bin
counter and the reference gauges carry them as ``bin``, and the rules relabel ``le`` to ``bin``
where they join the two.

``prometheus_client`` is imported inside :class:`ServiceMetrics` only: it decides at import time
whether to write multiprocess files (``PROMETHEUS_MULTIPROC_DIR``), and BentoML sets that variable
for its workers after this module may already have been imported.

References:
    Estimated accuracy as mean calibrated confidence is NannyML's CBPE (confidence-based
    performance estimation); PSI and KS as in :mod:`pipeline.drift`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.drift import bin_counts, bin_index, check_edges, ks_statistic, psi
from pipeline.feature_norm import LEVELS as FEATURE_LEVELS
from pipeline.feature_norm import STATISTIC as FEATURE_STATISTIC
from pipeline.input_stats import STATISTICS as INPUT_STATISTICS
from pipeline.model_card import ModelCard
from serving.feedback import REASONS as FEEDBACK_REASONS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)

# Reasons the service is known to use; their counters start at 0 so rate() sees the first one.
# Reasons the service's own checks give (pipeline/images.py, serving/images.py, serving/guard.py),
# pre-registered so
# dashboards show 0 rather than no data; pydantic's error types and "overloaded" appear on use.
REJECTION_REASONS = (
    "empty_body",
    "not_an_image",
    "truncated_image",
    "too_many_pixels",
    "too_large",
    "too_many_items",
    "unsupported_media_type",
    "bad_shape",
    "bad_dtype",
    "non_finite",
    "out_of_range",
    "method_not_allowed",
    "too_many_requests",
    "timeout",
)
# Labels must stay few and fixed: a reason is a short snake_case word, never request data.
_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")
# float32 softmax can overshoot 1 by a few ulps; anything further out is a caller's bug.
_CONFIDENCE_TOLERANCE = 1e-6
# Per-process gauges keep one series per worker (pid label); static ones keep live workers' max.
_WINDOW_MODE = "liveall"
_STATIC_MODE = "livemax"
# window_stats() key -> per-process gauge (name, help)
_WINDOW_GAUGES = {
    "mean_confidence": (
        "rankcal_window_mean_confidence_ratio",
        "Mean calibrated top-1 confidence over this process's rolling window",
    ),
    "estimated_accuracy": (
        "rankcal_window_estimated_accuracy_ratio",
        "Estimated accuracy (mean calibrated confidence, CBPE) over the rolling window",
    ),
    "psi": ("rankcal_window_psi", "PSI of the rolling window against the reference"),
    "ks": ("rankcal_window_ks", "Binned KS distance of the rolling window to the reference"),
    "size": ("rankcal_window_size", "Predictions currently in the rolling window"),
}
_STATIC_HELP = {
    "rankcal_reference_mean_confidence_ratio": (
        "Reference (held-out images) mean calibrated confidence"
    ),
    "rankcal_reference_images": (
        "Held-out images the confidence reference was binned on (its sampling noise)"
    ),
    "rankcal_model_evaluation_accuracy_ratio": "Test-set accuracy of the served model",
    "rankcal_ood_threshold": (
        "OOD score (rankcal_model_info's ood_score) below which a prediction is flagged OOD"
    ),
    "rankcal_window_capacity": "Predictions the rolling window holds when full",
    "rankcal_min_predictions": (
        "Predictions needed before drift and estimated accuracy are reported or alerted on"
    ),
}


class ConfidenceWindow:
    """The last ``capacity`` confidences of this process, binned on the reference's edges.

    A ring buffer with running bin counts and a running sum: pushing n values costs
    O(n + bins) whatever the capacity. The sum is recomputed exactly once per ``capacity``
    insertions so that floating-point error cannot accumulate.
    """

    def __init__(self, capacity: int, edges: Sequence[float]) -> None:
        if capacity < 1:
            raise ValueError(f"window must be >= 1, got {capacity}")
        self.edges = check_edges(edges)
        self._values = np.zeros(capacity, dtype=np.float64)
        self._counts = np.zeros(self.edges.size - 1, dtype=np.int64)
        self._next = 0  # slot the next value goes to
        self._size = 0
        self._sum = 0.0
        self._since_exact_sum = 0

    def push(self, values: np.ndarray) -> None:
        """Append a batch in order; the oldest values fall out once the buffer is full."""
        capacity = self._values.size
        new = np.asarray(values, dtype=np.float64).ravel()[-capacity:]
        slots = (self._next + np.arange(new.size)) % capacity
        # Until the buffer is full it fills from slot 0, so occupied slots are those < size.
        evicted = self._values[slots[slots < self._size]]
        self._counts += bin_counts(new, self.edges) - bin_counts(evicted, self.edges)
        self._values[slots] = new
        self._next = (self._next + new.size) % capacity
        self._size = min(self._size + new.size, capacity)
        self._since_exact_sum += new.size
        if self._since_exact_sum >= capacity:
            self._sum = float(self._values[: self._size].sum())
            self._since_exact_sum = 0
        else:
            self._sum += float(new.sum()) - float(evicted.sum())

    @property
    def capacity(self) -> int:
        """Most values held."""
        return self._values.size

    @property
    def size(self) -> int:
        """Number of values held (at most the capacity)."""
        return self._size

    @property
    def counts(self) -> np.ndarray:
        """Values per bin ``(edges[i], edges[i + 1]]``, as :func:`pipeline.drift.bin_counts`."""
        return self._counts.copy()

    def values(self) -> np.ndarray:
        """The values held, oldest first."""
        if self._size < self._values.size:
            return self._values[: self._size].copy()
        return np.roll(self._values, -self._next)

    def mean(self) -> float:
        """Mean of the values held; NaN when empty."""
        return self._sum / self._size if self._size else float("nan")


class ServiceMetrics:
    """All Prometheus metrics of one service process, and its rolling drift window.

    Create one instance per worker, after the worker has started (BentoML sets
    ``PROMETHEUS_MULTIPROC_DIR`` first). Call :meth:`record_predictions` for served predictions
    only and :meth:`record_rejection` for refused requests: a rejected request touches nothing
    but the rejection counter.

    Args:
        card: The served model's card (classes, reference histogram, evaluation accuracy).
        window: Predictions per process in the rolling drift window.
        provider: The ONNX Runtime execution provider actually in use
            (``session.get_providers()[0]``).
        registry: Registry to register with; the default ``prometheus_client.REGISTRY`` if None.
        min_predictions: Predictions the window must hold before its mean, estimated accuracy,
            PSI and KS are reported (NaN before: on a handful of predictions they are noise);
            exported as ``rankcal_min_predictions``, which the alert rules wait for too.

    Raises:
        ValueError: If ``min_predictions`` is not in 1..``window``.
    """

    def __init__(
        self,
        card: ModelCard,
        window: int,
        provider: str,
        registry: CollectorRegistry | None = None,
        min_predictions: int = 1,
    ) -> None:
        if not 1 <= min_predictions <= window:
            raise ValueError(f"min_predictions must be in 1..{window}, got {min_predictions}")
        import prometheus_client as prom  # lazily: see the module docstring
        import prometheus_client.values
        from prometheus_client.utils import floatToGoString

        _warn_if_multiprocess_missed(prometheus_client.values.ValueClass)
        reg = prom.REGISTRY if registry is None else registry
        ref = card.reference_confidence
        self._window = ConfidenceWindow(window, ref.bin_edges)
        self._reference = np.asarray(ref.counts, dtype=np.float64)
        self._num_classes = card.num_classes
        self._min_predictions = min_predictions
        self._lock = threading.Lock()
        le = [floatToGoString(e) for e in self._window.edges[1:]]
        self._define_traffic(prom, reg, card, le)
        self._define_window(prom, reg)
        self._define_static(prom, reg, card, provider, le)
        self._define_inputs(prom, reg, card)
        self._define_feedback(prom, reg, le)

    def _define_traffic(
        self, prom: Any, reg: CollectorRegistry, card: ModelCard, le: list[str]
    ) -> None:
        self._confidence = prom.Histogram(
            "rankcal_confidence",
            "Calibrated top-1 confidence of served predictions",
            buckets=[float(e) for e in self._window.edges[1:]],
            registry=reg,
        )
        bins = prom.Counter(
            "rankcal_confidence_bin",
            "Served predictions per confidence bin (lo, bin] (not cumulative)",
            ["bin"],
            registry=reg,
        )
        self._bins = [bins.labels(value) for value in le]
        predictions = prom.Counter(
            "rankcal_predictions",
            "Served predictions by predicted class",
            ["class_name"],
            registry=reg,
        )
        self._predictions = [predictions.labels(name) for name in card.class_names]
        self._ood = prom.Counter(
            "rankcal_ood_predictions",
            "Served predictions flagged out-of-distribution",
            registry=reg,
        )
        self._rejected = prom.Counter(
            "rankcal_rejected_requests", "Refused requests by reason", ["reason"], registry=reg
        )
        for reason in REJECTION_REASONS:
            self._rejected.labels(reason)

    def _define_window(self, prom: Any, reg: CollectorRegistry) -> None:
        self._window_gauges = {}
        for key, (name, doc) in _WINDOW_GAUGES.items():
            gauge = prom.Gauge(name, doc, registry=reg, multiprocess_mode=_WINDOW_MODE)
            gauge.set(0 if key == "size" else float("nan"))  # unknown, not "no drift"
            self._window_gauges[key] = gauge

    def _define_static(
        self, prom: Any, reg: CollectorRegistry, card: ModelCard, provider: str, le: list[str]
    ) -> None:
        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
            return prom.Gauge(name, doc, labels, registry=reg, multiprocess_mode=_STATIC_MODE)

        info = gauge(
            "rankcal_model_info",
            "Served model; provider is the active ONNX Runtime execution provider, ood_score the "
            "score is_ood compares with rankcal_ood_threshold",
            ["model_version", "provider", "dataset", "ood_score"],
        )
        info.labels(card.model_version, provider, card.dataset, card.ood_score).set(1)
        fraction = gauge(
            "rankcal_reference_bucket_ratio",
            "Reference (held-out images) fraction of predictions per confidence bin (lo, bin]",
            ["bin"],
        )
        cdf = gauge(
            "rankcal_reference_cdf_ratio",
            "Reference fraction of predictions with confidence <= bin",
            ["bin"],
        )
        total = self._reference.sum()
        cumulative = np.cumsum(self._reference) / total
        for i, value in enumerate(le):
            fraction.labels(value).set(self._reference[i] / total)
            cdf.labels(value).set(cumulative[i])
        scalars = {
            "rankcal_reference_mean_confidence_ratio": card.reference_confidence.mean,
            "rankcal_reference_images": total,
            "rankcal_model_evaluation_accuracy_ratio": card.test_accuracy / 100.0,  # card: percent
            "rankcal_ood_threshold": card.ood_threshold,
            "rankcal_window_capacity": self._window.capacity,
            "rankcal_min_predictions": self._min_predictions,
        }
        for name, value in scalars.items():
            gauge(name, _STATIC_HELP[name]).set(value)

    def _define_inputs(self, prom: Any, reg: CollectorRegistry, card: ModelCard) -> None:
        """Input statistics per bin, and their training-split reference, where the card has one.

        Four statistics of the pixels (``card.input_reference``) and the feature norm's training
        rank (``card.feature_reference``, :mod:`pipeline.feature_norm`), all in [0, 1], counted in
        one family so the same recording rules compare each with its reference. The bins are
        labelled ``bin`` with their upper edge, not ``le``: these are not cumulative histogram
        buckets (``promtool check metrics`` reserves ``le`` for those).
        """
        self._input_bins: dict[str, list[Any]] = {}
        self._input_edges: dict[str, np.ndarray] = {}
        references: dict[str, tuple[Sequence[float], Sequence[int]]] = {}
        if (ref := card.input_reference) is not None:
            references |= {name: (ref.edges, ref.counts(name)) for name in INPUT_STATISTICS}
        else:
            logger.warning(
                "the model card has no input reference (exported before input drift was "
                "measured): the pixel statistics are not exported"
            )
        if (features := card.feature_reference) is not None:
            references[FEATURE_STATISTIC] = (FEATURE_LEVELS, features.counts)
        if not references:
            return
        from prometheus_client.utils import floatToGoString

        bins = prom.Counter(
            "rankcal_input_bin",
            "Served inputs per bin (lo, bin] of each input statistic (not cumulative)",
            ["statistic", "bin"],
            registry=reg,
        )
        fraction = prom.Gauge(
            "rankcal_input_reference_ratio",
            "Training-split fraction of images per bin (lo, bin] of each input statistic",
            ["statistic", "bin"],
            registry=reg,
            multiprocess_mode=_STATIC_MODE,
        )
        size = prom.Gauge(
            "rankcal_input_reference_images",
            "Training images each input statistic's reference was binned on (its sampling noise)",
            ["statistic"],
            registry=reg,
            multiprocess_mode=_STATIC_MODE,
        )
        for name, (edges, reference) in references.items():
            self._input_edges[name] = check_edges(edges)
            labels = [floatToGoString(e) for e in self._input_edges[name][1:]]
            counts = np.asarray(reference, dtype=np.float64)
            self._input_bins[name] = [bins.labels(name, value) for value in labels]
            for value, share in zip(labels, counts / counts.sum(), strict=True):
                fraction.labels(name, value).set(share)
            size.labels(name).set(counts.sum())

    def _define_feedback(self, prom: Any, reg: CollectorRegistry, le: list[str]) -> None:
        """Delayed labels (``POST /feedback``) per confidence bin of the labelled prediction.

        Per bin, the correct and wrong counts and the sum of the predictions' confidences: a
        bin's realized accuracy is correct / (correct + wrong), its mean confidence the sum over
        the same count, and the realized ECE ``sum_b |correct_b - confidence_b| / labels`` (see
        ``serving/prometheus/recording_rules.yml``). All counters: they sum over workers and
        replicas.
        """
        labels = prom.Counter(
            "rankcal_feedback_labels",
            "Delayed true labels counted, per confidence bin (lo, bin] of their prediction",
            ["bin", "outcome"],
            registry=reg,
        )
        self._feedback = {o: [labels.labels(v, o) for v in le] for o in ("correct", "wrong")}
        confidence = prom.Counter(
            "rankcal_feedback_confidence",
            "Sum of the calibrated confidences of the labelled predictions, per bin (lo, bin]",
            ["bin"],
            registry=reg,
        )
        self._feedback_confidence = [confidence.labels(v) for v in le]
        self._feedback_refused = prom.Counter(
            "rankcal_feedback_refused",
            "Feedback items refused, by reason (none of them touches the label counters)",
            ["reason"],
            registry=reg,
        )
        for reason in FEEDBACK_REASONS:
            self._feedback_refused.labels(reason)

    def record_feedback(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        """Count verified feedback: each labelled prediction's confidence and whether its
        predicted class was the true one.

        Raises:
            ValueError: On mismatched shapes or a confidence outside [0, 1]; nothing is
                recorded then.
        """
        conf = np.asarray(confidence, dtype=np.float64)
        right = np.asarray(correct)
        if conf.ndim != 1 or right.shape != conf.shape or right.dtype != np.bool_:
            raise ValueError(
                f"confidence and correct must be 1-D of one length, correct bool; got "
                f"{conf.shape}, {right.shape} {right.dtype}"
            )
        if conf.size and (not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1):
            raise ValueError(f"confidence must be in [0, 1], got {conf}")
        bins = bin_index(conf, self._window.edges)
        n_bins = self._window.edges.size - 1
        _inc_nonzero(self._feedback["correct"], np.bincount(bins[right], minlength=n_bins))
        _inc_nonzero(self._feedback["wrong"], np.bincount(bins[~right], minlength=n_bins))
        sums = np.bincount(bins, weights=conf, minlength=n_bins)
        for i in np.flatnonzero(sums):
            self._feedback_confidence[i].inc(float(sums[i]))

    def record_feedback_refusal(self, reason: str) -> None:
        """Count one refused feedback item (``reason``: one of :data:`serving.feedback.REASONS`).

        Raises:
            ValueError: For another reason.
        """
        if reason not in FEEDBACK_REASONS:
            raise ValueError(f"unknown feedback refusal reason {reason!r}")
        self._feedback_refused.labels(reason).inc()

    def record_inputs(self, stats: dict[str, np.ndarray] | None) -> None:
        """Count the statistics (:func:`pipeline.input_stats.input_statistics`, and the feature
        norm's rank under ``"feature_norm"``) of the images the model answered, at the shape the
        model saw them (``None``: nothing to count; a statistic missing from ``stats``: not
        counted)."""
        if not self._input_bins or stats is None:
            return
        for name, children in self._input_bins.items():
            if name in stats:
                _inc_nonzero(children, bin_counts(stats[name], self._input_edges[name]))

    def record_predictions(
        self, confidence: np.ndarray, predicted: np.ndarray, is_ood: np.ndarray
    ) -> None:
        """Count one request's or batch's served predictions and update the window gauges.

        Args:
            confidence: Calibrated top-1 confidence per prediction, in [0, 1].
            predicted: Predicted class index per prediction.
            is_ood: Whether each prediction was flagged out-of-distribution (bool). Flagged
                predictions are still served, so they count in every other metric too.

        Raises:
            ValueError: On mismatched shapes, a confidence outside [0, 1] or a class index out
                of range; nothing is recorded then.
        """
        conf, pred, ood = self._validated(confidence, predicted, is_ood)
        if conf.size == 0:
            return
        for value in conf.tolist():
            self._confidence.observe(value)
        _inc_nonzero(self._bins, bin_counts(conf, self._window.edges))
        _inc_nonzero(self._predictions, np.bincount(pred, minlength=self._num_classes))
        flagged = int(np.count_nonzero(ood))
        if flagged:
            self._ood.inc(flagged)
        with self._lock:
            self._window.push(conf)
            for key, value in self._stats().items():
                self._window_gauges[key].set(value)

    def record_rejection(self, reason: str) -> None:
        """Count one refused request.

        Args:
            reason: Short snake_case label, e.g. ``"too_large"`` (see :data:`REJECTION_REASONS`).

        Raises:
            ValueError: If ``reason`` is not a short snake_case word.
        """
        if not isinstance(reason, str) or not _REASON.fullmatch(reason):
            raise ValueError(f"rejection reason must be snake_case, <= 40 chars, got {reason!r}")
        self._rejected.labels(reason).inc()

    def window_stats(self) -> dict[str, float]:
        """This process's rolling window: ``mean_confidence``, ``estimated_accuracy`` (a
        fraction, equal to the mean calibrated confidence), ``psi``, ``ks`` (NaN while the
        window holds fewer than ``min_predictions``) and ``size`` (predictions held)."""
        with self._lock:
            return self._stats()

    def _stats(self) -> dict[str, float]:
        size = self._window.size
        if size < self._min_predictions:
            nan = float("nan")
            return dict.fromkeys(("mean_confidence", "estimated_accuracy", "psi", "ks"), nan) | {
                "size": float(size)
            }
        counts = self._window.counts
        mean = self._window.mean()
        return {
            "mean_confidence": mean,
            "estimated_accuracy": mean,
            "psi": psi(counts, self._reference),
            "ks": ks_statistic(counts, self._reference),
            "size": float(size),
        }

    def _validated(
        self, confidence: np.ndarray, predicted: np.ndarray, is_ood: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        conf = np.asarray(confidence, dtype=np.float64)
        pred, ood = np.asarray(predicted), np.asarray(is_ood)
        if conf.ndim != 1 or pred.shape != conf.shape or ood.shape != conf.shape:
            raise ValueError(
                "confidence, predicted and is_ood must be 1-D of one length, got shapes "
                f"{conf.shape}, {pred.shape}, {ood.shape}"
            )
        if ood.dtype != np.bool_:
            raise ValueError(f"is_ood must be a bool array, got dtype {ood.dtype}")
        if conf.size == 0:
            return conf, pred, ood
        tol = _CONFIDENCE_TOLERANCE
        if not np.all(np.isfinite(conf)) or conf.min() < -tol or conf.max() > 1 + tol:
            raise ValueError(
                f"confidence must be finite and in [0, 1], got min {conf.min()}, max {conf.max()}"
            )
        if not np.issubdtype(pred.dtype, np.integer) or pred.min() < 0:
            raise ValueError(f"predicted must be class indices >= 0, got {pred.dtype} {pred}")
        if pred.max() >= self._num_classes:
            raise ValueError(
                f"predicted class {pred.max()} out of range for {self._num_classes} classes"
            )
        # Clip the rounding overshoot so the histogram and the window bin values alike.
        return np.clip(conf, 0.0, 1.0), pred, ood


def _inc_nonzero(children: Sequence[Any], counts: np.ndarray) -> None:
    for i in np.flatnonzero(counts):
        children[i].inc(int(counts[i]))


def _warn_if_multiprocess_missed(value_class: type) -> None:
    """Warn when the env asks for multiprocess mode but prometheus_client was imported before."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ and not getattr(
        value_class, "_multiprocess", False
    ):
        logger.warning(
            "PROMETHEUS_MULTIPROC_DIR=%s is set but prometheus_client was imported before it: "
            "this process's metrics stay in memory and a multiprocess /metrics will miss them",
            os.environ["PROMETHEUS_MULTIPROC_DIR"],
        )
