"""Baseline calibration losses the paper compares against: label smoothing, focal loss, and the
classic Mixup label-mixture loss. Pure tensor code.
"""

from __future__ import annotations

import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import Tensor


def label_smoothing_loss(logits: Tensor, labels: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy against ``(1 − ε)·onehot + ε/K``.

    References:
        Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016.
    """
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def focal_loss(logits: Tensor, labels: Tensor, gamma: float) -> Tensor:
    """``mean(−(1 − p_y)^γ · log p_y)``; γ = 0 is cross-entropy.

    References:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017;
        Mukhoti et al., "Calibrating Deep Neural Networks using Focal Loss", NeurIPS 2020.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return (-((1.0 - log_p.exp()) ** gamma) * log_p).mean()


def mixup_loss(logits: Tensor, labels: Tensor, partner_labels: Tensor, lam: float) -> Tensor:
    """Cross-entropy against the label mixture ``λ·onehot(y) + (1 − λ)·onehot(y[π])``.

    References:
        Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
    """
    return lam * F.cross_entropy(logits, labels) + (1.0 - lam) * F.cross_entropy(
        logits, partner_labels
    )
