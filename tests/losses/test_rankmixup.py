"""MRL and M-NDCG against hand-computed values and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses.rankmixup import mndcg_loss, mrl_loss


def two_class(conf: float) -> list[float]:
    """Logits of a two-class sample whose max-softmax confidence is ``conf``."""
    return [math.log(conf / (1.0 - conf)), 0.0]


class TestMRL:
    raw = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    mixed = torch.tensor([[1.0, 0.5], [0.5, 0.2]])

    def test_hand_computed_faithful(self) -> None:
        # max logits: raw (2, 1), mixed (1, 0.5); hinge with m=1: (0, 0.5).
        # faithful = mean(mask) * mean(hinge) = 0.5 * 0.25 whichever sample is masked.
        for valid in ([True, False], [False, True]):
            loss = mrl_loss(self.raw, self.mixed, torch.tensor(valid), margin=1.0)
            assert loss.item() == pytest.approx(0.125)

    def test_hand_computed_per_sample(self) -> None:
        first = mrl_loss(self.raw, self.mixed, torch.tensor([True, False]), 1.0, "per_sample")
        second = mrl_loss(self.raw, self.mixed, torch.tensor([False, True]), 1.0, "per_sample")
        assert first.item() == pytest.approx(0.0)
        assert second.item() == pytest.approx(0.5)

    def test_per_sample_without_valid_pairs_is_zero(self) -> None:
        loss = mrl_loss(self.raw, self.mixed, torch.tensor([False, False]), 1.0, "per_sample")
        assert loss.item() == 0.0

    @pytest.mark.parametrize("mask", ["faithful", "per_sample"])
    def test_zero_once_raw_beats_mixed_by_margin(self, mask: str) -> None:
        torch.manual_seed(0)
        mixed = torch.randn(8, 5)
        raw = mixed + 2.0  # every raw max beats the mixed max by (about) the margin
        valid = torch.ones(8, dtype=torch.bool)
        assert mrl_loss(raw, mixed, valid, 2.0, mask).item() == pytest.approx(0.0, abs=1e-6)
        assert mrl_loss(raw, mixed, valid, 1.0, mask).item() == 0.0
        assert mrl_loss(raw, mixed, valid, 2.5, mask).item() == pytest.approx(0.5)

    def test_several_copies_average_the_hinge(self) -> None:
        mixed = torch.cat([self.mixed, self.mixed + 1.0])  # hinges (0, .5) then (1, 1.5)
        loss = mrl_loss(self.raw, mixed, torch.ones(4, dtype=torch.bool), 1.0, "per_sample")
        assert loss.item() == pytest.approx(0.75)


class TestMNDCG:
    def test_hand_computed_single_copy(self) -> None:
        # raw conf 0.5 (rel 1), mixed conf 0.5 (rel 0.7); discounts log2(2)=1, log2(3).
        dcg = 0.5 + 0.5 / math.log2(3)  # 0.81546
        idcg = 1.0 + 0.7 / math.log2(3)  # 1.44165
        loss = mndcg_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[0.7]]))
        assert loss.item() == pytest.approx(1.0 - dcg / idcg, abs=1e-6)
        assert loss.item() == pytest.approx(0.434353, abs=1e-6)

    def test_overconfidence_uses_inverse_ratio(self) -> None:
        # raw 0.9, mixed 0.9 against relevances 1 and 0.6: DCG < IDCG (0.9+0.568 < 1+0.379).
        # mixed 0.9 vs relevance 0.55 with raw 0.99: DCG = 0.99+0.568 = 1.558 > IDCG = 1.347.
        raw = torch.tensor([two_class(0.99)])
        mixed = torch.tensor([two_class(0.9)])
        dcg = 0.99 + 0.9 / math.log2(3)
        idcg = 1.0 + 0.55 / math.log2(3)
        loss = mndcg_loss(raw, mixed, torch.tensor([[0.55]]))
        assert dcg > idcg
        assert loss.item() == pytest.approx(1.0 - idcg / dcg, abs=1e-6)

    def test_mixed_items_are_sorted_by_relevance(self) -> None:
        # copy 0 has the lower relevance: after sorting, 0.9 gets discount log2(3).
        raw = torch.tensor([two_class(0.8)])
        mixed = torch.tensor([two_class(0.55), two_class(0.7)])
        rel = torch.tensor([[0.6], [0.9]])
        dcg = 0.8 + 0.7 / math.log2(3) + 0.55 / 2.0
        idcg = 1.0 + 0.9 / math.log2(3) + 0.6 / 2.0
        assert mndcg_loss(raw, mixed, rel).item() == pytest.approx(1 - dcg / idcg, abs=1e-6)

    def test_zero_when_confidences_equal_relevances(self) -> None:
        raw = torch.tensor([[100.0, 0.0], [0.0, 100.0]])  # confidence 1 == relevance of raw
        rel = torch.tensor([[0.6, 0.75], [0.9, 1.0 - 1e-6]])
        mixed = torch.tensor([two_class(0.6), two_class(0.75), two_class(0.9), [100.0, 0.0]])
        assert mndcg_loss(raw, mixed, rel).item() == pytest.approx(0.0, abs=1e-6)

    @pytest.mark.parametrize("copies", [1, 2, 4])
    def test_bounded_scalar_for_any_copy_count(self, copies: int) -> None:
        gen = torch.Generator().manual_seed(copies)
        raw = torch.randn(16, 10, generator=gen) * 3
        mixed = torch.randn(copies * 16, 10, generator=gen) * 3
        rel = 0.5 + 0.5 * torch.rand(copies, 16, generator=gen)
        loss = mndcg_loss(raw, mixed, rel)
        assert loss.shape == ()
        assert 0.0 <= loss.item() <= 1.0  # NDCG <= 1 for every sample

    def test_gradient_reaches_raw_and_mixed_logits(self) -> None:
        raw = torch.randn(4, 3, requires_grad=True)
        mixed = torch.randn(8, 3, requires_grad=True)
        mndcg_loss(raw, mixed, torch.full((2, 4), 0.7)).backward()
        assert raw.grad is not None and raw.grad.abs().sum() > 0
        assert mixed.grad is not None and mixed.grad.abs().sum() > 0
