"""Baseline losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses.baselines import focal_loss, label_smoothing_loss, mixup_loss


def test_focal_loss_hand_computed() -> None:
    logits = torch.tensor([[0.0, 0.0]])  # p_y = 0.5
    labels = torch.tensor([0])
    assert focal_loss(logits, labels, 0.0).item() == pytest.approx(math.log(2))
    assert focal_loss(logits, labels, 2.0).item() == pytest.approx(0.25 * math.log(2))


def test_label_smoothing_hand_computed() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = (0.75, 0.25)
    expected = -(0.95 * math.log(0.75) + 0.05 * math.log(0.25))  # eps=0.1 over K=2
    assert label_smoothing_loss(logits, torch.tensor([0]), 0.1).item() == pytest.approx(expected)


def test_mixup_loss_mixes_the_two_cross_entropies() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0]])
    expected = -(0.7 * math.log(0.75) + 0.3 * math.log(0.25))
    loss = mixup_loss(logits, torch.tensor([0]), torch.tensor([1]), 0.7)
    assert loss.item() == pytest.approx(expected)
