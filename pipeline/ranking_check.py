"""Does a trained network rank confidences as RankMixup assumes? Measured on held-out images.

RankMixup trains a network so that a raw image's confidence is above its mixed versions' (MRL)
and mixed versions are ordered by their mixing coefficient (M-NDCG). This module measures both
on images the network never trained on, for any trained model (so a CE baseline is measured
against the same hypothesis): each image gets ``copies`` mixed versions, copy n mixing it with a
random partner at one λ_n ~ Beta(α, α), and

- ``raw_above_mixed``: the percentage of (raw, mixed) pairs whose raw confidence is higher;
- ``kendall_tau``: the mean, over images, of Kendall's τ between the confidences of the raw image
  and its copies and their relevances (1 for the raw image, max(λ_n, 1 − λ_n) for a copy, as
  M-NDCG's relevances; copies whose partner has the same class are left out, their relevance
  being 1 too);
- ``spearman``: Spearman's ρ between mixed copies' confidences and relevances, pooled.

Confidence is the network's own max-softmax (before temperature scaling, which changes how the
confidences of different images compare): the hypothesis is about what training produced.

References:
    Noh et al., "RankMixup: Ranking-Based Mixup Training for Network Calibration", ICCV 2023
    (MRL and M-NDCG; relevances as in their official code).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from pipeline.metrics.ood import max_softmax

ALPHA = 2.0  # the paper's Beta(α, α) for mixup on CIFAR
COPIES = 3  # the paper's N for M-NDCG


def mixed_copies(
    x: np.ndarray, labels: np.ndarray, copies: int, alpha: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` mixed versions of the float batch ``x`` (N, ...) and each item's relevance.

    Copy n is ``λ_n x + (1 − λ_n) x[π_n]`` with one λ_n ~ Beta(α, α) for the batch and a random
    permutation π_n, as in training. Relevance is max(λ_n, 1 − λ_n), or 1 where the partner has
    the image's class (itself included).

    Returns:
        The copies, shape (copies, N, ...), and relevances, shape (copies, N).
    """
    rng = np.random.default_rng(seed)
    out = np.empty((copies, *x.shape), dtype=x.dtype)
    relevance = np.empty((copies, len(x)))
    for n in range(copies):
        lam = float(rng.beta(alpha, alpha))
        partner = rng.permutation(len(x))
        out[n] = lam * x + (1.0 - lam) * x[partner]
        same = labels[partner] == labels
        relevance[n] = np.where(same, 1.0, max(lam, 1.0 - lam))
    return out, relevance


def ranking_report(raw_conf: np.ndarray, mixed_conf: np.ndarray, relevance: np.ndarray) -> dict:
    """The three figures of the module docstring from confidences and relevances.

    Args:
        raw_conf: Raw images' confidences, shape (N,).
        mixed_conf: Mixed copies' confidences, shape (copies, N).
        relevance: Mixed copies' relevances, shape (copies, N); 1 marks a same-class partner.

    Returns:
        ``raw_above_mixed`` (percent), ``kendall_tau`` and ``spearman`` (NaN where undefined),
        and ``pairs``, the (raw, mixed) pairs counted.
    """
    mixed = relevance < 1.0  # a copy that really mixes two classes
    above = (raw_conf[None, :] > mixed_conf)[mixed]
    taus = []
    for i in range(raw_conf.shape[0]):
        keep = mixed[:, i]
        if keep.sum() < 1:
            continue
        conf = np.concatenate([[raw_conf[i]], mixed_conf[keep, i]])
        rel = np.concatenate([[1.0], relevance[keep, i]])
        tau = stats.kendalltau(conf, rel).statistic
        if np.isfinite(tau):
            taus.append(tau)
    pooled = (
        stats.spearmanr(mixed_conf[mixed], relevance[mixed]).statistic
        if mixed.sum() > 2
        else float("nan")
    )
    return {
        "raw_above_mixed": 100.0 * float(above.mean()) if above.size else float("nan"),
        "kendall_tau": float(np.mean(taus)) if taus else float("nan"),
        "spearman": float(pooled),
        "pairs": int(above.size),
    }


def check_ranking(
    logits_of: Callable[[np.ndarray], np.ndarray],
    model_input: np.ndarray,
    labels: np.ndarray,
    *,
    copies: int = COPIES,
    alpha: float = ALPHA,
    seed: int = 0,
) -> dict:
    """:func:`ranking_report` of a network on ``model_input`` (normalised float images).

    Args:
        logits_of: The network: float model input (N, C, H, W) to logits (N, K).
        model_input: Preprocessed images (mixing happens here, as in training).
        labels: Their classes (N,).
        copies: Mixed copies per image.
        alpha: Beta(α, α) of the mixing coefficients.
        seed: Seeds λ and the partners.
    """
    copies_x, relevance = mixed_copies(model_input, labels, copies, alpha, seed)
    raw_conf = max_softmax(logits_of(model_input))
    mixed_conf = np.stack([max_softmax(logits_of(c)) for c in copies_x])
    return {**ranking_report(raw_conf, mixed_conf, relevance), "copies": copies, "alpha": alpha}
