"""Calibration and OOD-detection metrics: pure numpy.

The single metrics return fractions; :func:`calibration_report`, :func:`ood_report` and
:func:`detection_metrics` report percentages (see their docstrings).
"""

from __future__ import annotations

from pipeline.metrics.calibration import (
    ReliabilityBins,
    accuracy,
    adaptive_calibration_error,
    brier_score,
    calibration_report,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    overconfidence_error,
    reliability_bins,
    underconfidence_error,
)
from pipeline.metrics.ood import (
    detection_metrics,
    energy,
    entropy,
    max_softmax,
    ood_report,
    roc_points,
    threshold_at_tpr,
)

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "adaptive_calibration_error",
    "brier_score",
    "calibration_report",
    "classwise_calibration_error",
    "detection_metrics",
    "energy",
    "entropy",
    "expected_calibration_error",
    "max_softmax",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "ood_report",
    "overconfidence_error",
    "reliability_bins",
    "roc_points",
    "threshold_at_tpr",
    "underconfidence_error",
]
