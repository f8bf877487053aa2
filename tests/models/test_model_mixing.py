"""The MixableNet split points: features/head_from equivalence, validation, gradients, formats."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from pipeline.models import ARCHS, MixableNet, build_model

# Split-point tests use 8x8 inputs: every layer still runs, but even WRN-28-10 stays cheap.
SIZE = 8
DEFAULT_LAYERS = {
    "small_cnn": (4, 2),
    "resnet18": (5, 4),
    "resnet34": (5, 4),
    "resnet50": (5, 4),
    "wrn16_4": (4, 3),
    "wrn28_10": (4, 3),
}


@cache
def cached_model(arch: str) -> MixableNet:
    """Build each architecture once; tests that train rebuild their own copy."""
    return build_model(arch, num_classes=5, in_channels=3).eval()


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("arch", ARCHS)
def test_mix_layer_counts_and_defaults(arch: str) -> None:
    model = cached_model(arch)
    assert (model.num_mix_layers, model.default_manifold_layer) == DEFAULT_LAYERS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_split_forward_matches_forward_at_every_layer(arch: str) -> None:
    model = cached_model(arch)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
        for layer in range(model.num_mix_layers):
            split = model.head_from(model.features(x, layer), layer)
            assert torch.allclose(split, expected, atol=1e-5), f"layer {layer}"


@pytest.mark.parametrize("arch", ARCHS)
def test_head_from_leaves_its_input_untouched(arch: str) -> None:
    # A trainer reuses one hidden state for several head passes (raw and mixed); an in-place
    # op at the start of a segment would silently corrupt the second pass.
    model = cached_model(arch)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        for layer in range(model.num_mix_layers):
            hidden = model.features(x, layer)
            before = hidden.clone()
            model.head_from(hidden, layer)
            assert torch.equal(hidden, before), f"layer {layer}"


def test_layer_zero_is_the_input() -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    assert cached_model("small_cnn").features(x, 0) is x


def test_default_resnet_layer_is_last_stage_output() -> None:
    # After stage 4 a CIFAR ResNet-18 has 512 channels at 1/8 resolution, right before pooling.
    with torch.no_grad():
        h = cached_model("resnet18").features(torch.randn(2, 3, 32, 32), 4)
    assert h.shape == (2, 512, 4, 4)


def test_default_wrn_layer_is_last_stage_output() -> None:
    with torch.no_grad():
        h = cached_model("wrn16_4").features(torch.randn(2, 3, 32, 32), 3)
    assert h.shape == (2, 256, 8, 8)


@pytest.mark.parametrize("method", ["features", "head_from"])
@pytest.mark.parametrize("bad", [-1, 4, 99])
def test_invalid_layer_names_value_and_range(method: str, bad: int) -> None:
    model = cached_model("small_cnn")
    with pytest.raises(ValueError, match=rf"{bad}.*0\.\.3"):
        getattr(model, method)(torch.randn(2, 3, SIZE, SIZE), bad)


def test_non_int_layer_rejected() -> None:
    with pytest.raises(ValueError, match="True"):
        cached_model("small_cnn").features(torch.randn(2, 3, SIZE, SIZE), True)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "wrn16_4"])
def test_gradients_reach_first_conv_through_mixed_default_layer(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5, in_channels=1).train()
    layer = model.default_manifold_layer
    hidden = model.features(torch.randn(4, 1, 16, 16), layer)
    mixed = 0.7 * hidden + 0.3 * hidden.flip(0)
    model.head_from(mixed, layer).logsumexp(1).sum().backward()
    grad = first_conv(model).weight.grad
    assert grad is not None
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "wrn16_4"])
def test_channels_last_matches_contiguous(arch: str) -> None:
    model = build_model(arch, num_classes=5, in_channels=3).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        layer = model.default_manifold_layer
        x_cl = x.contiguous(memory_format=torch.channels_last)
        got = model.head_from(model.features(x_cl, layer), layer)
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "wrn16_4"])
def test_runs_under_bf16_autocast(arch: str) -> None:
    model = cached_model(arch)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected, atol=0.2, rtol=0.1)
