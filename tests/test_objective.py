"""The per-step objective: which passes run and where gradients flow."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.models import build_model
from pipeline.objective import compute_loss, mix_layer
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
