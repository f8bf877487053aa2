"""Mixing plans: λ per copy, CutMix areas, relevances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.mixup import MixPlan, apply_plan, cutmix_box, relevance, sample_plans


def test_plans_are_seeded_and_draw_one_lambda_per_copy() -> None:
    first = sample_plans(8, 3, 2.0, np.random.default_rng(0))
    second = sample_plans(8, 3, 2.0, np.random.default_rng(0))
    assert [p.lam for p in first] == [p.lam for p in second]
    assert len({p.lam for p in first}) == 3
    for plan in first:
        assert sorted(plan.perm.tolist()) == list(range(8))


def test_mixup_is_the_convex_combination() -> None:
    x = torch.arange(4.0).view(4, 1)
    plan = MixPlan(0.25, torch.tensor([1, 0, 3, 2]))
    assert apply_plan(x, plan).flatten().tolist() == [0.75, 0.25, 2.75, 2.25]


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_lambda_equals_kept_area(seed: int) -> None:
    plans = sample_plans(2, 1, 1.0, np.random.default_rng(seed), cutmix_hw=(28, 20))
    x = torch.stack([torch.zeros(1, 28, 20), torch.ones(1, 28, 20)])
    mixed = apply_plan(x, MixPlan(plans[0].lam, torch.tensor([1, 0]), plans[0].box))
    kept = (mixed[0] == 0).float().mean().item()
    assert plans[0].lam == pytest.approx(kept)


def test_cutmix_box_is_clipped_to_the_image() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        top, bottom, left, right = cutmix_box((10, 12), float(rng.uniform()), rng)
        assert 0 <= top <= bottom <= 10 and 0 <= left <= right <= 12


def test_relevance_is_max_lambda_and_one_for_same_class_partners() -> None:
    labels = torch.tensor([0, 1, 0, 2])
    plans = [MixPlan(0.3, torch.tensor([2, 0, 0, 1])), MixPlan(0.8, torch.tensor([0, 1, 3, 2]))]
    rel = relevance(labels, plans)
    # copy 0: partners' classes (0, 0, 0, 1): same class for samples 0 and 2 -> 1, else 0.7.
    # copy 1: self partners for 0 and 1 -> 1; others mixed with another class -> 0.8.
    expected = torch.tensor([[1.0, 0.7, 1.0, 0.7], [1.0, 1.0, 0.8, 0.8]])
    assert torch.allclose(rel, expected)
