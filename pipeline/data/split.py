"""Seeded, stratified index splits."""

from __future__ import annotations

import numpy as np


def _check_labels(labels: np.ndarray) -> None:
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and validation, class by class.

    Each class with ``n >= 2`` members sends ``round(val_fraction * n)`` of them to validation,
    clamped to ``[1, n - 1]`` so both sides see every such class; singleton classes stay in train.

    Args:
        labels: 1-D class labels.
        val_fraction: Fraction in (0, 1) sent to validation.
        seed: Seed for the per-class shuffles.

    Returns:
        ``(train_idx, val_idx)``: sorted, disjoint int64 arrays that together cover all indices.
    """
    labels = np.asarray(labels)
    _check_labels(labels)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        n_val = min(max(round(val_fraction * len(members)), 1), len(members) - 1)
        val_parts.append(rng.permutation(members)[:n_val])
    if not val_parts:
        raise ValueError(f"no class has 2 or more samples among {len(labels)} labels")
    val_idx = np.sort(np.concatenate(val_parts)).astype(np.int64)
    in_val = np.zeros(len(labels), dtype=bool)
    in_val[val_idx] = True
    return np.flatnonzero(~in_val).astype(np.int64), val_idx


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Pick a seeded subset of ``n`` indices whose class proportions follow ``labels``.

    Per-class quotas use the largest-remainder method, so the size is exactly ``n``.

    Args:
        labels: 1-D class labels.
        n: Subset size; ``n >= len(labels)`` returns every index.
        seed: Seed for the per-class draws.

    Returns:
        Sorted int64 indices.
    """
    labels = np.asarray(labels)
    _check_labels(labels)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n / len(labels))
    quotas = np.floor(exact).astype(np.int64)
    # Stable sort keeps tie-breaking deterministic across platforms.
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[: n - int(quotas.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == cls), size=int(q), replace=False)
        for cls, q in zip(classes, quotas, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)
