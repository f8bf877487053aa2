"""Registry, output shapes, parameter counts and argument validation of the model zoo."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from pipeline.models import ARCHS, MixableNet, build_model, wide_resnet

CHEAP_ARCHS = ("small_cnn", "resnet18", "resnet34", "wrn16_4")
BIG_ARCHS = ("resnet50", "wrn28_10")


@cache
def cached_model(arch: str, in_channels: int, num_classes: int = 10) -> MixableNet:
    """Build each configuration once per session; the big ones take a noticeable moment."""
    return build_model(arch, num_classes=num_classes, in_channels=in_channels).eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_arch() -> None:
    assert set(ARCHS) == {*CHEAP_ARCHS, *BIG_ARCHS}


@pytest.mark.parametrize("arch", CHEAP_ARCHS)
@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32)])
def test_output_shape(arch: str, in_channels: int, size: int) -> None:
    model = cached_model(arch, in_channels, num_classes=7)
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", BIG_ARCHS)
def test_big_arch_output_shape(arch: str) -> None:
    with torch.no_grad():
        out = cached_model(arch, 3)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("size", [8, 12, 19, 64])
def test_small_cnn_accepts_any_size_from_8(size: int) -> None:
    with torch.no_grad():
        out = cached_model("small_cnn", 1)(torch.randn(2, 1, size, size))
    assert out.shape == (2, 10)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        # The widely quoted CIFAR-10 figures (e.g. kuangliu/pytorch-cifar, xternalz/WideResNet).
        ("resnet18", 11_173_962),
        ("resnet34", 21_282_122),
        ("resnet50", 23_520_842),
        ("wrn28_10", 36_479_194),
        ("wrn16_4", 2_748_890),
    ],
)
def test_param_counts_match_reference_figures(arch: str, expected: int) -> None:
    assert n_params(cached_model(arch, 3)) == expected


def test_small_cnn_param_count_by_hand() -> None:
    conv = 3 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9
    bn = 2 * (16 + 32 + 32 + 64)
    linear = 64 * 3 * 3 * 10 + 10  # the head pools to a 3x3 grid
    assert n_params(cached_model("small_cnn", 3)) == conv + bn + linear


def test_init_follows_spec() -> None:
    model = cached_model("resnet18", 3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # Kaiming fan-out: std = sqrt(2 / (out_channels * k * k)); a big layer pins it down well.
    big = max(convs, key=lambda m: m.weight.numel())
    fan_out = big.weight.shape[0] * big.weight.shape[2] * big.weight.shape[3]
    assert big.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)


def test_unknown_arch_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"'resnet19'.*small_cnn"):
        build_model("resnet19", num_classes=10, in_channels=3)


@pytest.mark.parametrize(("num_classes", "in_channels"), [(1, 3), (10, 0)])
def test_bad_sizes_rejected(num_classes: int, in_channels: int) -> None:
    with pytest.raises(ValueError, match="got"):
        build_model("small_cnn", num_classes=num_classes, in_channels=in_channels)


@pytest.mark.parametrize(("depth", "widen", "dropout"), [(27, 10, 0.0), (16, 0, 0.0), (16, 1, 1.0)])
def test_wide_resnet_rejects_bad_hyperparameters(depth: int, widen: int, dropout: float) -> None:
    with pytest.raises(ValueError, match="got"):
        wide_resnet(depth, widen, num_classes=10, in_channels=3, dropout=dropout)


def test_wide_resnet_dropout_is_active_only_in_training() -> None:
    model = wide_resnet(10, 1, num_classes=3, in_channels=1, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        # Train-mode batch norm is deterministic, so two differing passes can only be dropout.
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))
