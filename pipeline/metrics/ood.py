"""Out-of-distribution detection: scores from logits, and how well they separate ID from OOD.

Convention throughout: a detection score is oriented so that HIGHER means "more
in-distribution" (ID), and ID is the positive class for AUROC, AUPR-In and FPR@95%TPR. The raw
scores below keep their natural signs (entropy and energy are LOWER for ID); :func:`ood_report`
flips them. Pure numpy; scikit-learn (imported on first use) computes the ROC and PR curves.

References:
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples
    in Neural Networks", ICLR 2017; Liu et al., "Energy-based Out-of-distribution Detection",
    NeurIPS 2020.
"""

from __future__ import annotations

import math

import numpy as np

POSITIVE_CLASS = "in-distribution"
SCORES = ("msp", "entropy", "energy")


def _validate_logits(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    """Check a logit matrix and return it as float64."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"{name} must be (n, K) with n, K >= 1, got {logits.shape}")
    logits = logits.astype(np.float64)
    if not np.isfinite(logits).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return logits


def _validate_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """Check a score vector and return it as float64."""
    scores = np.asarray(scores)
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(f"{name} must be (n,) with n >= 1, got {scores.shape}")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return scores


def _logsumexp(z: np.ndarray) -> np.ndarray:
    """Row-wise ``log Σ_k exp(z_k)``, shifted by the row maximum so nothing overflows."""
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """Returns the maximum softmax probability (MSP) per row, higher for ID, shape (n,).

    Args:
        logits: Logits (n, K).

    References:
        Hendrycks & Gimpel, ICLR 2017.
    """
    z = _validate_logits(logits)
    return np.exp(z.max(axis=1) - _logsumexp(z))


def entropy(logits: np.ndarray, *, normalize: bool = False) -> np.ndarray:
    """Returns the predictive entropy ``−Σ_k p_k ln p_k`` of the softmax, lower for ID, shape (n,).

    Args:
        logits: Logits (n, K).
        normalize: Divide by ``ln K`` so the entropy lies in [0, 1] (needs K >= 2).
    """
    z = _validate_logits(logits)
    if normalize and z.shape[1] < 2:
        raise ValueError(f"normalize needs K >= 2 classes, got logits {z.shape}")
    log_p = z - _logsumexp(z)[:, None]
    value = -np.sum(np.exp(log_p) * log_p, axis=1)
    return value / math.log(z.shape[1]) if normalize else value


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Returns the free energy ``E(x) = −T · logsumexp(z / T)``, lower for ID, shape (n,).

    Args:
        logits: Logits (n, K).
        temperature: T > 0.

    References:
        Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020, Eq. 7.
    """
    z = _validate_logits(logits)
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return -temperature * _logsumexp(z / temperature)


def threshold_at_tpr(id_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Returns the largest threshold t with at least ``tpr`` of the ID scores ``>= t``.

    Serving flags an input as OOD when its (higher-is-ID) score falls below t. With n ID scores
    sorted in decreasing order, t is the ``ceil(tpr · n)``-th of them; no interpolation.

    Args:
        id_scores: Scores of in-distribution samples (n,), higher meaning more ID.
        tpr: Share of ID samples to keep, in (0, 1].
    """
    scores = _validate_scores(id_scores, "id_scores")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    # round() guards against 0.95 * n landing a hair above an integer.
    kept = max(1, math.ceil(round(tpr * len(scores), 9)))
    return float(np.sort(scores)[::-1][kept - 1])


def detection_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR@95%TPR of one score, all in PERCENT.

    The score must be higher for ID. AUROC, AUPR-In and FPR@95 treat ID as positive; AUPR-Out
    treats OOD as positive and negates the score. FPR@95 is the share of OOD scores at or above
    :func:`threshold_at_tpr` (0.95) of the ID scores.

    Args:
        id_scores: Scores of in-distribution samples (n,).
        ood_scores: Scores of out-of-distribution samples (m,).

    Returns:
        ``auroc``, ``aupr_in``, ``aupr_out`` and ``fpr95``, each in [0, 100].

    References:
        Hendrycks & Gimpel, ICLR 2017.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    id_scores = _validate_scores(id_scores, "id_scores")
    ood_scores = _validate_scores(ood_scores, "ood_scores")
    is_id = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    score = np.concatenate([id_scores, ood_scores])
    threshold = threshold_at_tpr(id_scores, 0.95)
    return {
        "auroc": 100.0 * float(roc_auc_score(is_id, score)),
        "aupr_in": 100.0 * float(average_precision_score(is_id, score)),
        "aupr_out": 100.0 * float(average_precision_score(1.0 - is_id, -score)),
        "fpr95": 100.0 * float(np.mean(ood_scores >= threshold)),
    }


def ood_report(id_logits: np.ndarray, ood_logits: np.ndarray) -> dict[str, dict[str, float | str]]:
    """Detection metrics of the MSP, entropy and energy scores, in PERCENT.

    Each score is oriented so that higher means more in-distribution: ``msp`` as is,
    ``entropy`` negated, ``energy`` negated (``−E = logsumexp(z)``, T = 1). ID is the positive
    class for ``auroc``, ``aupr_in`` and ``fpr95`` (share of OOD samples scored at or above the
    threshold that keeps 95% of the ID samples); ``aupr_out`` flips both (OOD positive, score
    negated). Every entry records this as ``"positive": "in-distribution"``.

    Args:
        id_logits: Logits of in-distribution samples (n, K).
        ood_logits: Logits of out-of-distribution samples (m, K).

    Returns:
        Score name (``msp``, ``entropy``, ``energy``) to ``auroc``, ``aupr_in``, ``aupr_out``,
        ``fpr95`` (percent) and ``positive``.

    References:
        Hendrycks & Gimpel, ICLR 2017; Liu et al., NeurIPS 2020.
    """
    id_z = _validate_logits(id_logits, "id_logits")
    ood_z = _validate_logits(ood_logits, "ood_logits")
    if id_z.shape[1] != ood_z.shape[1]:
        raise ValueError(
            f"id_logits and ood_logits must have the same K, got {id_z.shape} and {ood_z.shape}"
        )
    oriented = {
        "msp": max_softmax,
        "entropy": lambda z: -entropy(z),
        "energy": lambda z: -energy(z),
    }
    report: dict[str, dict[str, float | str]] = {}
    for name in SCORES:
        metrics = detection_metrics(oriented[name](id_z), oriented[name](ood_z))
        report[name] = {**metrics, "positive": POSITIVE_CLASS}
    return report


def roc_points(
    id_scores: np.ndarray, ood_scores: np.ndarray, max_points: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(fpr, tpr)`` of the ROC curve (ID positive, higher score = ID), for plotting.

    Both are non-decreasing, start at (0, 0) and end at (1, 1). Curves longer than
    ``max_points`` keep ``max_points`` evenly spaced vertices, always the first and last.

    Args:
        id_scores: Scores of in-distribution samples (n,).
        ood_scores: Scores of out-of-distribution samples (m,).
        max_points: The most points to return, >= 2.
    """
    from sklearn.metrics import roc_curve

    id_scores = _validate_scores(id_scores, "id_scores")
    ood_scores = _validate_scores(ood_scores, "ood_scores")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points must be an integer >= 2, got {max_points!r}")
    is_id = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    fpr, tpr, _ = roc_curve(is_id, np.concatenate([id_scores, ood_scores]))
    if len(fpr) > max_points:
        keep = np.unique(np.round(np.linspace(0, len(fpr) - 1, max_points)).astype(np.int64))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr, tpr
