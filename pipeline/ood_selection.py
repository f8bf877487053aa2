"""The OOD score the service flags inputs with, and its threshold, chosen without the OOD sets
the evaluation reports.

Three candidates, each computed from the calibrated logits ``z / T`` the exported graph returns
and oriented higher for in-distribution inputs: ``msp``, the calibrated top-1 confidence;
``entropy``, the negative entropy of the calibrated softmax; ``energy``, the negative free energy
``logsumexp(z / T)``. The choice is the candidate with the
higher AUROC between the validation images (ID) and :func:`synthetic_ood`, images made from the
validation images for this purpose alone; the threshold keeps ``tpr`` of the validation images.
The reported OOD sets (digits, noise, downloads, inverted test images) are only ever scored
after the choice, so their figures are an honest test of it.

NumPy and Pillow only: the service computes :func:`score` on every prediction.

References:
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples
    in Neural Networks", ICLR 2017 (MSP); Liu et al., "Energy-based Out-of-distribution
    Detection", NeurIPS 2020 (energy); Noroozi & Favaro, "Unsupervised Learning of Visual
    Representations by Solving Jigsaw Puzzles", ECCV 2016 (tile shuffling, used here to make
    images with the training data's local statistics and no object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from pipeline.metrics.ood import detection_metrics, energy, entropy, max_softmax, threshold_at_tpr

OODScore = Literal["msp", "entropy", "energy"]
CANDIDATES: tuple[OODScore, ...] = ("msp", "entropy", "energy")
SELECTION_SET = "synthetic: validation images with shuffled 4x4 tiles, and smooth random fields"
_GRID = 4  # tiles per side of a shuffled image
_FIELD = 4  # random values per side of a smooth field, upsampled to the image size


def score(name: str, calibrated_logits: np.ndarray) -> np.ndarray:
    """The OOD score ``name`` of each row, higher for in-distribution inputs, shape (n,).

    Args:
        name: ``msp`` (max softmax of the calibrated logits), ``entropy`` (the negative
            entropy of their softmax) or ``energy`` (their logsumexp, the negative free energy
            at T = 1 of ``z / T``).
        calibrated_logits: Logits already divided by the temperature (n, K).

    Raises:
        ValueError: On an unknown name.
    """
    if name == "msp":
        return max_softmax(calibrated_logits)
    if name == "entropy":
        return -entropy(calibrated_logits)
    if name == "energy":
        return -energy(calibrated_logits)
    raise ValueError(f"OOD score must be one of {list(CANDIDATES)}, got {name!r}")


def synthetic_ood(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Images no class describes, made from ``images`` (uint8 ``(N, H, W, C)``), same shape.

    The first half shuffles each image's 4x4 grid of tiles (its local statistics stay, its
    object goes); the second half are smooth random fields (4x4 random values per channel,
    upsampled bilinearly), spanning the images' own intensity range. Seeded: the same inputs
    give the same set.

    Raises:
        ValueError: If the images are not uint8 ``(N, H, W, C)`` with N >= 2 and H, W >= 4.
    """
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) < 2 or min(x.shape[1:3]) < _GRID:
        raise ValueError(f"images must be uint8 (N>=2, H>=4, W>=4, C), got {x.dtype} {x.shape}")
    rng = np.random.default_rng(seed)
    n, height, width, channels = x.shape
    half = n // 2
    out = np.empty_like(x)
    rows = np.linspace(0, height, _GRID + 1).astype(int)
    cols = np.linspace(0, width, _GRID + 1).astype(int)
    tiles = [(r, c) for r in range(_GRID) for c in range(_GRID)]
    # Tiles differ in size by a pixel when the grid does not divide the image; only tiles of
    # equal size swap, so every pixel is written once.
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, (r, c) in enumerate(tiles):
        by_size.setdefault((rows[r + 1] - rows[r], cols[c + 1] - cols[c]), []).append(k)
    for i in range(half):
        out[i] = x[i]
        order = rng.permutation(len(tiles))
        for group in by_size.values():
            shuffled = [g for g in order if g in group]
            for dst, src in zip(group, shuffled, strict=True):
                (r0, c0), (r1, c1) = tiles[dst], tiles[src]
                out[i, rows[r0] : rows[r0 + 1], cols[c0] : cols[c0 + 1]] = x[
                    i, rows[r1] : rows[r1 + 1], cols[c1] : cols[c1 + 1]
                ]
    low, high = int(x.min()), int(x.max())
    for i in range(half, n):
        field = rng.uniform(low, high, size=(_FIELD, _FIELD, channels)).astype(np.float32)
        planes = [
            np.asarray(
                Image.fromarray(field[..., ch], mode="F").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
            )
            for ch in range(channels)
        ]
        out[i] = np.clip(np.rint(np.stack(planes, axis=-1)), 0, 255).astype(np.uint8)
    return out


@dataclass(frozen=True)
class OODChoice:
    """The chosen score, its threshold and what each candidate scored on the selection set.

    Attributes:
        name: The chosen score.
        threshold: Inputs scoring below it are flagged OOD; keeps ``tpr`` of validation.
        tpr: Share of validation images kept above the threshold.
        candidates: Each candidate's AUROC, AUPR-In, AUPR-Out and FPR@95 (percent) on
            validation (ID) against the synthetic set.
    """

    name: OODScore
    threshold: float
    tpr: float
    candidates: dict[str, dict[str, float]]


def choose_ood_score(val_logits: np.ndarray, synthetic_logits: np.ndarray, tpr: float) -> OODChoice:
    """Pick the candidate with the highest AUROC (the earlier of :data:`CANDIDATES` on a tie:
    the simpler score) and its threshold.

    Args:
        val_logits: Calibrated logits ``z / T`` of the validation images (ID).
        synthetic_logits: Calibrated logits of :func:`synthetic_ood` of them.
        tpr: Share of validation images the threshold keeps, in (0, 1].
    """
    candidates = {
        name: detection_metrics(score(name, val_logits), score(name, synthetic_logits))
        for name in CANDIDATES
    }
    best = max(CANDIDATES, key=lambda name: (candidates[name]["auroc"], -CANDIDATES.index(name)))
    threshold = threshold_at_tpr(score(best, val_logits), tpr)
    return OODChoice(name=best, threshold=threshold, tpr=tpr, candidates=candidates)
