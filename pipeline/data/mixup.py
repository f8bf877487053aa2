"""Mixing of a batch with a permutation of itself: Mixup, CutMix, and the mixed-label statistics
RankMixup needs (relevances and same-class masks). Pure tensor code; randomness comes from an
explicit ``numpy.random.Generator``.

References:
    Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
    Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers", ICCV 2019.
    Noh et al., "RankMixup: Ranking-Based Mixup Training for Network Calibration", ICCV 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class MixPlan:
    """One mixed copy of a batch: ``lam * x + (1 - lam) * x[perm]``, or a pasted box.

    Attributes:
        lam: Weight of the original sample. For CutMix it is the share of the image kept.
        perm: Partner index of every sample (a permutation of ``range(B)``).
        box: CutMix box ``(top, bottom, left, right)`` in pixels, ``None`` for Mixup.
    """

    lam: float
    perm: Tensor
    box: tuple[int, int, int, int] | None = None


def sample_plans(
    batch_size: int,
    copies: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    cutmix_hw: tuple[int, int] | None = None,
) -> list[MixPlan]:
    """Draw ``copies`` independent mixing plans, each with one λ for the whole batch.

    As in the official RankMixup code, λ ~ Beta(α, α) is drawn once per copy (not per sample)
    and every copy gets a fresh permutation.

    Args:
        batch_size: Samples in the batch.
        copies: Number of mixed copies.
        alpha: Beta distribution parameter.
        rng: Source of randomness.
        cutmix_hw: Image height and width; when given, plans are CutMix boxes and ``lam`` is
            the kept area share.

    Returns:
        One plan per copy.

    References:
        Noh et al., ICCV 2023 (arXiv 2308.11990), Sec. 3.
    """
    plans = []
    for _ in range(copies):
        lam = float(rng.beta(alpha, alpha))
        perm = torch.from_numpy(rng.permutation(batch_size))
        if cutmix_hw is None:
            plans.append(MixPlan(lam, perm))
        else:
            box = cutmix_box(cutmix_hw, lam, rng)
            plans.append(MixPlan(kept_area(cutmix_hw, box), perm, box))
    return plans


def cutmix_box(
    hw: tuple[int, int], lam: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image, centred uniformly and clipped to it.

    References:
        Yun et al., ICCV 2019, Sec. 3.1.
    """
    h, w = hw
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
    return int(top), int(bottom), int(left), int(right)


def kept_area(hw: tuple[int, int], box: tuple[int, int, int, int]) -> float:
    """λ after clipping: 1 − box area / image area."""
    top, bottom, left, right = box
    return 1.0 - (bottom - top) * (right - left) / (hw[0] * hw[1])


def apply_plan(x: Tensor, plan: MixPlan) -> Tensor:
    """Mix ``x`` (B, C, H, W or any B-leading shape) with its permutation following ``plan``."""
    partner = x[plan.perm]
    if plan.box is None:
        return plan.lam * x + (1.0 - plan.lam) * partner
    top, bottom, left, right = plan.box
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return mixed


def same_class(labels: Tensor, plan: MixPlan) -> Tensor:
    """Bool (B,): the mixed label is one-hot because the partner has the same class (or is self)."""
    return labels == labels[plan.perm]


def relevance(labels: Tensor, plans: list[MixPlan]) -> Tensor:
    """Relevance of every mixed copy: the max of its mixed label, (N, B).

    ``max(λ, 1 − λ)`` for a partner of another class, 1 for a same-class or self partner.

    References:
        Noh et al., ICCV 2023 (arXiv 2308.11990), Eq. 6.
    """
    rows = []
    for plan in plans:
        top = max(plan.lam, 1.0 - plan.lam)
        rows.append(torch.where(same_class(labels, plan), 1.0, top))
    return torch.stack(rows).float()
