"""Cheap statistics of every input image, to see input drift that confidence alone hides.

A model's confidence can stay high on inputs it was never trained on (inverted photos, noise);
the images themselves still show the shift. Four statistics per image, each in [0, 1], computed
on the uint8 pixels the model sees (after fitting, before normalisation): ``mean`` intensity,
``contrast`` (the standard deviation, times 2 so that it spans [0, 1]), ``dark_share`` and
``bright_share`` (the shares of channel values in the darkest and the brightest quarter of the
range). Quarters, not a few levels from each end: a photo resized on its way in (upscaled by a
client, downscaled by the service) loses its exact blacks and whites, and a 5%-of-range cut
read that as drift (PSI 0.54 on test images sent as 280x280 JPEGs; 0.07 with quarters).

The evaluate stage bins them on the training split (:func:`reference_histograms`, carried in
the model card); the service bins every input it answers on the same edges, and Prometheus
compares the two with PSI (``serving/prometheus/``).

NumPy only: the service computes them for every prediction.

References:
    Rabanser et al., "Failing Loudly: An Empirical Study of Methods for Detecting Dataset
    Shift", NeurIPS 2019 (univariate tests on input features as shift detectors).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.drift import bin_counts, bin_index

STATISTICS = ("mean", "contrast", "dark_share", "bright_share")
# 10 equal-width bins over [0, 1]: every statistic lives there. PSI of a sample of n inputs
# against the reference is about (bins - 1) / n on its own; with 10 bins the 100 inputs the
# alerts wait for give 0.14 on average for test images (20 bins: about twice that).
EDGES = tuple(float(e) for e in np.linspace(0.0, 1.0, 11))
DARK, BRIGHT = 64, 191
# A bin with less than this share of the training images is outside the training range: with
# the evaluation's 10,000 reference images, fewer than 10 of them.
ATYPICAL_FRACTION = 0.001


def input_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of each image of a uint8 ``(N, H, W, C)`` batch, each shape (N,) in [0, 1].

    Raises:
        ValueError: If ``images`` is not uint8 with 4 dimensions.
    """
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
    flat = x.reshape(len(x), int(np.prod(x.shape[1:])))  # -1 fails on an empty batch
    values = flat.astype(np.float32) / 255.0
    return {
        "mean": values.mean(axis=1, dtype=np.float64),
        # A [0, 1] variable's standard deviation is at most 1/2.
        "contrast": np.minimum(2.0 * values.std(axis=1, dtype=np.float64), 1.0),
        "dark_share": (flat <= DARK).mean(axis=1),
        "bright_share": (flat >= BRIGHT).mean(axis=1),
    }


def atypical(
    stats: dict[str, np.ndarray],
    edges: Sequence[float],
    reference: dict[str, Sequence[int]],
    min_fraction: float = ATYPICAL_FRACTION,
) -> np.ndarray:
    """Whether each image has a statistic in a bin that held less than ``min_fraction`` of the
    training images: outside what the model was trained on, whatever its confidence says.

    A flat grey image (a photo of noise, downscaled) has almost no contrast and no dark pixels,
    which no Fashion-MNIST training image has, yet the model answers it confidently; its
    statistics flag it. On the model's own validation images the flag is almost never raised
    (``metrics/eval.json``, ``ood_selection.atypical_share``).

    Args:
        stats: :func:`input_statistics` of a batch.
        edges: The reference's bin edges.
        reference: Training-split counts per statistic on ``edges``.
        min_fraction: Bins with a smaller share of the training images are atypical.

    Returns:
        Bool per image.
    """
    flagged: np.ndarray | None = None
    for name in STATISTICS:
        counts = np.asarray(reference[name], dtype=np.float64)
        rare = counts / counts.sum() < min_fraction
        hits = rare[bin_index(stats[name], edges)]
        flagged = hits if flagged is None else flagged | hits
    assert flagged is not None
    return flagged


def reference_histograms(
    images: np.ndarray, batch_size: int = 1024, *, invert: bool = False
) -> dict[str, list[int]]:
    """Counts of each statistic of ``images`` in the bins of :data:`EDGES`, batch by batch (the
    images may be a memory-mapped split); ``invert`` bins ``255 - images`` instead."""
    counts = {name: np.zeros(len(EDGES) - 1, dtype=np.int64) for name in STATISTICS}
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])
        stats = input_statistics(255 - batch if invert else batch)
        for name in STATISTICS:
            counts[name] += bin_counts(stats[name], EDGES)
    return {name: c.tolist() for name, c in counts.items()}
