"""The per-step objective: which passes run and where gradients flow."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.models import build_model
from pipeline.objective import compute_loss, mix_layer, running_stats_frozen
from tests.conftest import configs


def first_conv_grad(model: torch.nn.Module) -> torch.Tensor:
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.grad is not None
    return conv.weight.grad.clone()


@pytest.mark.parametrize("name", ["mrl", "mndcg"])
@pytest.mark.parametrize("mixing", ["mixup", "cutmix", "manifold"])
def test_gradients_reach_the_model_through_both_parts(
    params: dict[str, Any], name: str, mixing: str
) -> None:
    _, loss_cfg, _ = configs(params, loss={"name": name, "mixing": mixing, "margin": 50.0})
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3, in_channels=1)
    x, y = torch.randn(12, 1, 16, 16), torch.arange(12) % 3

    grads = {}
    for part, weight in (("ce", 0.0), ("total", 1.0)):
        model.zero_grad()
        cfg = dataclasses.replace(loss_cfg, weight=weight)
        loss, parts = compute_loss(model, x, y, cfg, np.random.default_rng(0))
        loss.backward()
        grads[part] = first_conv_grad(model)
        assert parts["rank"] > 0  # margin 50 keeps every MRL hinge active
    # the ranking part alone (total minus CE, same draws) moves the first layer too
    assert (grads["total"] - grads["ce"]).abs().sum() > 0
    assert grads["ce"].abs().sum() > 0


def test_loss_is_ce_plus_weighted_rank(params: dict[str, Any]) -> None:
    _, loss_cfg, _ = configs(params, loss={"weight": 0.1})
    model = build_model("small_cnn", num_classes=3, in_channels=1).train()
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 3
    loss, parts = compute_loss(model, x, y, loss_cfg, np.random.default_rng(1))
    assert loss.item() == pytest.approx((parts["ce"] + 0.1 * parts["rank"]).item(), rel=1e-6)


def test_mixed_copies_are_forwarded_in_one_second_pass(params: dict[str, Any]) -> None:
    _, loss_cfg, _ = configs(params, loss={"num_mixes": 4})
    model = build_model("small_cnn", num_classes=3, in_channels=1)
    seen: list[int] = []
    head = model.head_from

    def spy(h: torch.Tensor, layer: int) -> torch.Tensor:
        seen.append(h.shape[0])
        return head(h, layer)

    model.head_from = spy  # type: ignore[method-assign]
    compute_loss(
        model, torch.randn(6, 1, 16, 16), torch.arange(6) % 3, loss_cfg, np.random.default_rng(0)
    )
    assert seen == [6, 24]  # the raw batch, then 4 copies stacked copy-major


def test_manifold_layer_out_of_range_is_a_clear_error(params: dict[str, Any]) -> None:
    _, loss_cfg, _ = configs(params, loss={"mixing": "manifold", "manifold_layer": 99})
    model = build_model("small_cnn", num_classes=3, in_channels=1)
    with pytest.raises(ValueError, match=r"loss\.manifold_layer must be in .* got 99"):
        mix_layer(model, loss_cfg)


def bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def test_frozen_running_stats_by_hand() -> None:
    bn = torch.nn.BatchNorm1d(1, momentum=0.1).train()
    bn(torch.tensor([[0.0], [2.0]]))  # mean 1, unbiased variance 2
    assert bn.running_mean.item() == pytest.approx(0.1)  # 0.9 * 0 + 0.1 * 1
    assert bn.running_var.item() == pytest.approx(1.1)  # 0.9 * 1 + 0.1 * 2
    with running_stats_frozen(bn):
        out = bn(torch.tensor([[10.0], [20.0]]))
    # still normalised with the batch's own statistics (mean 15, biased variance 25) ...
    assert out.flatten().tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)
    # ... but the running statistics and the batch count are untouched
    assert (bn.running_mean.item(), bn.running_var.item()) == pytest.approx((0.1, 1.1))
    assert bn.num_batches_tracked.item() == 1 and bn.track_running_stats
    bn(torch.tensor([[0.0], [2.0]]))  # outside, updates resume: 0.9 * 0.1 + 0.1 * 1
    assert bn.running_mean.item() == pytest.approx(0.19)


def test_running_stats_are_restored_when_the_pass_fails() -> None:
    bn = torch.nn.BatchNorm1d(2).train()
    with pytest.raises(RuntimeError), running_stats_frozen(bn):
        bn(torch.zeros(3, 5))  # wrong number of features
    assert bn.track_running_stats


@pytest.mark.parametrize("name", ["mrl", "mndcg"])
@pytest.mark.parametrize("mixing", ["mixup", "manifold"])
def test_frozen_mixed_pass_keeps_the_raw_statistics_and_the_same_step(
    params: dict[str, Any], name: str, mixing: str
) -> None:
    _, loss_cfg, _ = configs(params, loss={"name": name, "mixing": mixing})
    torch.manual_seed(0)
    start = build_model("small_cnn", num_classes=3, in_channels=1).train()
    x, y = torch.randn(12, 1, 16, 16), torch.arange(12) % 3

    raw_only = copy.deepcopy(start)
    raw_only(x)  # the statistics one raw pass leaves
    steps = {}
    for mode in ("update", "freeze"):
        model = copy.deepcopy(start)
        cfg = dataclasses.replace(loss_cfg, mixed_bn=mode)
        loss, parts = compute_loss(model, x, y, cfg, np.random.default_rng(0))
        loss.backward()
        steps[mode] = (loss.detach(), parts["rank"], first_conv_grad(model), bn_buffers(model))

    frozen, updated, expected = steps["freeze"][3], steps["update"][3], bn_buffers(raw_only)
    assert frozen.keys() == expected.keys() and len(frozen) > 0
    for key in expected:
        assert torch.equal(frozen[key], expected[key]), key
    assert any(
        not torch.equal(updated[k], expected[k]) for k in expected
    )  # the mixed pass moved them
    # the losses and gradients are those of the official update mode
    for a, b in zip(steps["freeze"][:3], steps["update"][:3], strict=True):
        assert torch.equal(a, b)
