"""Post-hoc temperature scaling of classifier logits, and accuracy estimated from confidence.

A temperature ``T > 0`` is always APPLIED as ``softmax(z / T)``: ``T > 1`` softens over-confident
predictions, ``T < 1`` sharpens under-confident ones, and the arg-max (so the accuracy) never
changes. The official RankMixup training logs compute the "post-temperature" metrics without
dividing the logits by ``T``, so their scaled numbers equal the raw ones; here the fitted
temperature is really applied. Pure numpy/scipy, no I/O.

References:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, Sec. 4.2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from pipeline.metrics.calibration import expected_calibration_error

DEFAULT_NLL_BOUNDS: tuple[float, float] = (0.05, 20.0)


def ece_grid() -> np.ndarray:
    """The official RankMixup code's temperature grid: 0.1, 0.2, …, 10.0 (100 values)."""
    return np.round(np.arange(0.1, 10.01, 0.1), 2)


@dataclass(frozen=True)
class TemperatureFit:
    """Result of :func:`fit_temperature`; apply it as ``softmax(logits / temperature)``.

    Attributes:
        temperature: Temperature minimising the validation NLL (the one used downstream).
        method: How ``temperature`` was chosen: ``"nll"``, or ``"none: ..."`` (1.0) where the
            validation split is classified without error and the NLL has no minimum.
        nll_before: Mean validation NLL at ``T = 1`` (nats).
        nll_after: Mean validation NLL at ``temperature`` (nats).
        ece_grid_temperature: The official RankMixup code's choice, minimising validation ECE
            over :func:`ece_grid`; reported for comparison only.
    """

    temperature: float
    method: str
    nll_before: float
    nll_after: float
    ece_grid_temperature: float


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable ``softmax(logits / temperature)`` over the last axis, in float64.

    Args:
        logits: Scores, any shape with classes on the last axis (e.g. (n, K) or (K,)).
        temperature: ``T > 0``; the logits are divided by it.

    Returns:
        Probabilities of the same shape, summing to 1 along the last axis.

    References:
        Guo et al., ICML 2017, Sec. 4.2 (temperature scaling).
    """
    _check_temperature(temperature)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0 or z.shape[-1] == 0:
        raise ValueError(f"logits need a non-empty class axis, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite, got NaN or inf")
    z = z / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def temperature_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of ``labels`` under ``softmax(logits / T)``.

    Args:
        logits: Scores (n, K).
        labels: True classes (n,), integers in ``[0, K)``.
        temperature: ``T > 0``.

    Returns:
        ``mean_i [logsumexp(z_i / T) − z_{i, y_i} / T]``.
    """
    z, y = _validated(logits, labels)
    _check_temperature(temperature)
    return _nll(z, y, temperature)


def fit_temperature_nll(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    bounds: tuple[float, float] = DEFAULT_NLL_BOUNDS,
) -> float:
    """Temperature minimising the validation NLL, searched on ``log T`` within ``bounds``.

    The NLL is convex in ``1/T``, hence unimodal in ``log T``, so a bounded Brent search
    finds the global minimum; its tolerance (1e-10 on ``log T``) makes ``T`` exact to far
    better than 1e-4 relative. The bounds themselves are also compared, so a minimum on the
    edge (e.g. a perfectly separated validation set wants ``T → 0``) returns the bound.

    Args:
        logits: Validation logits (n, K).
        labels: Validation classes (n,).
        bounds: ``(low, high)`` with ``0 < low < high``.

    Returns:
        The fitted temperature, to apply as ``softmax(logits / T)``.

    References:
        Guo et al., ICML 2017, Sec. 4.2.
    """
    z, y = _validated(logits, labels)
    low, high = bounds
    if not (np.isfinite(low) and np.isfinite(high) and 0.0 < low < high):
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    result = minimize_scalar(
        lambda log_t: _nll(z, y, float(np.exp(log_t))),
        bounds=(np.log(low), np.log(high)),
        method="bounded",
        options={"xatol": 1e-10, "maxiter": 500},
    )
    candidates = [float(np.exp(result.x)), float(low), float(high)]
    losses = [_nll(z, y, t) for t in candidates]
    return candidates[int(np.argmin(losses))]


def fit_temperature_ece_grid(
    logits: np.ndarray,
    labels: np.ndarray,
    grid: np.ndarray | None = None,
    n_bins: int = 15,
) -> float:
    """Grid temperature minimising the validation ECE, as the official RankMixup code does.

    ECE uses ``n_bins`` equal-width bins holding ``lo < conf <= hi``
    (:func:`pipeline.metrics.calibration.expected_calibration_error`). Ties go to the first
    grid value.

    Args:
        logits: Validation logits (n, K).
        labels: Validation classes (n,).
        grid: Candidate temperatures (1-D, positive); :func:`ece_grid` when ``None``.
        n_bins: Number of ECE bins.

    Returns:
        The chosen grid value, to apply as ``softmax(logits / T)``.

    References:
        Guo et al., ICML 2017, Eq. 3 (ECE); Noh et al., "RankMixup", ICCV 2023 (official code).
    """
    z, y = _validated(logits, labels)
    temps = ece_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    if temps.ndim != 1 or temps.size == 0 or not np.all(np.isfinite(temps) & (temps > 0)):
        raise ValueError(f"grid must be a non-empty 1-D array of positive temperatures, got {grid}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    eces = [expected_calibration_error(softmax(z, float(t)), y, n_bins) for t in temps]
    return float(temps[int(np.argmin(eces))])


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """Fit ``T`` by validation NLL (the default downstream) and report the ECE-grid choice.

    Args:
        logits: Validation logits (n, K).
        labels: Validation classes (n,).

    Returns:
        The NLL temperature with NLL before/after and the ECE-grid temperature.

    References:
        Guo et al., ICML 2017, Sec. 4.2.
    """
    z, y = _validated(logits, labels)
    temperature, method = fit_temperature_nll(z, y), "nll"
    if temperature <= DEFAULT_NLL_BOUNDS[0] and bool(np.all(z.argmax(axis=1) == y)):
        # Every validation image right: the NLL falls as T -> 0 with no minimum, so the fit
        # would only report the bound (0.05: every answer at confidence 1.0, served as such).
        # Such a split cannot tell the temperature; the trained model's own (T = 1) stays.
        # Seen on a 120-image validation split of a pretrained backbone fine-tuned on photos.
        temperature, method = 1.0, "none: the validation split has no error"
    return TemperatureFit(
        temperature=temperature,
        method=method,
        nll_before=_nll(z, y, 1.0),
        nll_after=_nll(z, y, temperature),
        ece_grid_temperature=fit_temperature_ece_grid(z, y),
    )


def estimated_accuracy(probs: np.ndarray) -> float:
    """Label-free accuracy estimate: the average top-1 confidence.

    Exact in expectation when the model is calibrated on the (possibly shifted) data, so the
    gap to the measured accuracy is a calibration-under-shift diagnostic.

    Args:
        probs: Probabilities (n, K), e.g. ``softmax(logits, T)``.

    Returns:
        ``mean_i max_k probs[i, k]``.

    References:
        Guillory et al., "Predicting with Confidence on Unseen Distributions", ICCV 2021
        (average confidence); NannyML, "Confidence-Based Performance Estimation" (CBPE).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty (n, K) array, got shape {p.shape}")
    return float(p.max(axis=1).mean())


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    # log Σ_k exp(d_k) with d = (z − z_y) / T, as m + log1p(Σ_{k≠argmax} exp(d_k − m)): keeps
    # the tiny losses of confidently right samples (≈ e^{−margin/T}) that
    # logsumexp(z / T) − z_y / T rounds to 0, so the NLL stays strictly monotone near T → 0.
    rows = np.arange(len(y))
    d = (z - z[rows, y][:, None]) / temperature
    top = d.argmax(axis=1)
    m = d[rows, top]
    e = np.exp(d - m[:, None])
    e[rows, top] = 0.0
    return float(np.mean(m + np.log1p(e.sum(axis=1))))


def _check_temperature(temperature: float) -> None:
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def _validated(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits must be (n, K) with n >= 1 and K >= 2, got shape {z.shape}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape ({z.shape[0]},) to match logits, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {z.shape[1]}), got values from {y.min()} to {y.max()}"
        )
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite, got NaN or inf")
    return z, y.astype(np.intp)
