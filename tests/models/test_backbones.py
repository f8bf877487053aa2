"""torchvision and timm backbones as MixableNets: heads, channels, splits, names, weights.

No test touches the network: downloads are patched to fail and the Hugging Face Hub is offline;
pretrained weights come from files written into temporary caches.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from torch import nn

from pipeline.models import (
    ARCHS,
    BackboneNet,
    MixableNet,
    PretrainedWeightsError,
    build_model,
    check_arch,
    param_groups,
)
from pipeline.objective import mix_layer
from tests.conftest import configs

TIMM_SMALL = "mobilenetv3_small_050"  # 0.6 M parameters: the cheapest timm model to build
TIMM_REPO = "timm/mobilenetv3_small_050.lamb_in1k"  # its default pretrained tag on the Hub
# (arch, input side, mix layers, default layer): every family whose split the module claims.
SPLIT_FAMILIES = [
    ("tv:resnet18", 32, 5, 4),
    ("tv:efficientnet_b0", 32, 2, 1),
    ("tv:mobilenet_v2", 32, 2, 1),
    ("tv:mobilenet_v3_small", 32, 2, 1),
    ("tv:convnext_tiny", 32, 2, 1),
    ("tv:vgg11", 32, 2, 1),
    ("tv:alexnet", 64, 2, 1),  # its 11x11 stride-4 stem and three pools need 64 pixels
    ("tv:densenet121", 32, 2, 1),
    ("tv:regnet_y_400mf", 32, 2, 1),
    (f"timm:{TIMM_SMALL}", 32, 2, 1),
    ("timm:resnet10t", 32, 2, 1),
]
INPUT_ONLY = ["tv:shufflenet_v2_x0_5", "tv:mnasnet0_5", "tv:googlenet"]


pytestmark = pytest.mark.usefixtures("no_network")


@cache
def cached_model(arch: str, in_channels: int = 3) -> MixableNet:
    return build_model(arch, num_classes=5, in_channels=in_channels).eval()


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("arch", ["tv:resnet18", f"timm:{TIMM_SMALL}"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_head_and_first_conv_fit_the_dataset(arch: str, in_channels: int) -> None:
    model = cached_model(arch, in_channels)
    assert isinstance(model, BackboneNet) and model.arch == arch
    assert first_conv(model).in_channels == in_channels
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5


@pytest.mark.parametrize(("arch", "size", "layers", "default"), SPLIT_FAMILIES)
def test_split_recomposes_the_forward_exactly(
    arch: str, size: int, layers: int, default: int
) -> None:
    model = cached_model(arch)
    assert (model.num_mix_layers, model.default_manifold_layer) == (layers, default)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        for layer in range(layers):
            hidden = model.features(x, layer)
            before = hidden.clone()
            assert torch.equal(model.head_from(hidden, layer), expected), f"layer {layer}"
            assert torch.equal(hidden, before), f"head_from changed its input at layer {layer}"


def test_gradients_reach_the_stem_through_a_mixed_hidden_state() -> None:
    torch.manual_seed(0)
    model = build_model("tv:resnet18", num_classes=5, in_channels=1).train()
    hidden = model.features(torch.randn(4, 1, 32, 32), model.default_manifold_layer)
    mixed = 0.7 * hidden + 0.3 * hidden.flip(0)
    model.head_from(mixed, model.default_manifold_layer).logsumexp(1).sum().backward()
    assert first_conv(model).weight.grad.abs().sum() > 0  # type: ignore[union-attr]


@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")
@pytest.mark.parametrize("arch", INPUT_ONLY)
def test_unknown_split_mixes_the_input_only(arch: str, params: dict[str, Any]) -> None:
    model = build_model(arch, num_classes=5, in_channels=1)
    assert (model.num_mix_layers, model.default_manifold_layer) == (1, 0)
    x = torch.randn(2, 1, 32, 32)
    assert model.features(x, 0) is x
    out = model.train()(x)  # GoogLeNet's auxiliary heads are gone: one tensor in train mode
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    _, manifold, _ = configs(params, loss={"mixing": "manifold"})
    with pytest.raises(ValueError, match=rf"{arch}.*does not support Manifold Mixup.*mixup or"):
        mix_layer(model, manifold)
    _, cutmix, _ = configs(params, loss={"mixing": "cutmix"})
    assert mix_layer(model, cutmix) == 0


@pytest.mark.parametrize(
    "arch",
    [
        "small_cnn",
        "wrn16_4",
        "tv:resnet18",
        "tv:vit_b_16",
        "timm:resnet10t",
        "timm:resnet10t.c3_in1k",
    ],
)
def test_check_arch_accepts(arch: str) -> None:
    check_arch(arch)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("resnet19", r"unknown model.arch 'resnet19'; choose a built-in .*small_cnn.*tv:<name>"),
        ("tv:resnet19", r"not a torchvision classification model; did you mean resnet18"),
        ("tv:fasterrcnn_resnet50_fpn", r"not a torchvision classification model"),
        ("timm:resnet10x", r"not a timm model; did you mean resnet10t"),
        ("torchvision:resnet18", r"tv:<name> for a torchvision .* timm:<name> for a timm"),
    ],
)
def test_check_arch_names_what_is_accepted(arch: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_arch(arch)
    with pytest.raises(ValueError, match=message):
        build_model(arch, num_classes=5, in_channels=1)


def test_every_builtin_is_listed_in_the_unknown_arch_message() -> None:
    with pytest.raises(ValueError) as err:
        check_arch("nope")
    assert all(name in str(err.value) for name in ARCHS)


def test_unknown_torchvision_head_is_a_clear_error() -> None:
    # SqueezeNet classifies with a 1x1 convolution, not a Linear layer.
    with pytest.raises(ValueError, match=r"'tv:squeezenet1_1': cannot find its classification"):
        build_model("tv:squeezenet1_1", num_classes=5, in_channels=3)


def test_builtin_networks_have_no_pretrained_weights() -> None:
    with pytest.raises(ValueError, match=r"'small_cnn' is a built-in .*model.pretrained: false"):
        build_model("small_cnn", num_classes=5, in_channels=1, pretrained=True)


@pytest.mark.parametrize(
    ("arch", "head_names"),
    [
        ("small_cnn", ["segments.3.2.weight", "segments.3.2.bias"]),
        ("tv:resnet18", ["net.fc.weight", "net.fc.bias"]),
        (f"timm:{TIMM_SMALL}", ["net.classifier.weight", "net.classifier.bias"]),
    ],
)
def test_param_groups_give_the_head_lr_and_the_rest_a_scaled_lr(
    arch: str, head_names: list[str]
) -> None:
    model = cached_model(arch)
    groups = param_groups(model, lr=0.1, backbone_lr_scale=0.01)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 0.1), ("backbone", 0.1 * 0.01)]
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in groups[0]["params"]] == head_names
    assert len(groups[1]["params"]) == len(names) - len(head_names)
    optimizer = torch.optim.SGD(groups, lr=1.0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.001]


@pytest.mark.parametrize(
    ("lr", "scale", "message"),
    [(0.0, 1.0, "lr must be > 0, got 0.0"), (0.1, -1.0, "scale must be >= 0, got -1.0")],
)
def test_param_groups_reject_bad_rates(lr: float, scale: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        param_groups(cached_model("small_cnn"), lr, scale)


def tv_weights_file(torch_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised ResNet-18 saved where torchvision looks for its ImageNet weights."""
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    path = torch_home / "hub" / "checkpoints" / Path(url).name  # resnet18-f37072fd.pth
    path.parent.mkdir(parents=True)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    return path, state


def test_torchvision_weights_in_the_cache_load_without_network(no_network: Path) -> None:
    path, state = tv_weights_file(no_network / "torch")
    # The file name carries a hash prefix that torch.hub checks only when downloading: a local
    # file (here, random weights) is loaded as is.
    assert path.name == "resnet18-f37072fd.pth"
    model = build_model("tv:resnet18", num_classes=5, in_channels=1, pretrained=True)
    loaded = model.net.state_dict()  # type: ignore[union-attr]
    for key, value in state.items():
        if key == "conv1.weight":  # one grey channel: the sum over RGB, as timm does
            assert loaded[key].shape == (64, 1, 7, 7)
            assert torch.allclose(loaded[key], value.sum(dim=1, keepdim=True))
        elif not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert loaded["fc.weight"].shape == (5, 512)


def test_torchvision_download_failure_says_what_to_put_where(no_network: Path) -> None:
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("tv:resnet18", num_classes=5, in_channels=3, pretrained=True)
    message = str(err.value)
    expected = no_network / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert isinstance(err.value, RuntimeError)
    assert "'tv:resnet18'" in message and "ResNet18_Weights.IMAGENET1K_V1" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert f"put it at {expected}" in message and "network disabled in tests" in message
    assert "model.pretrained: false to train from scratch" in message


def test_timm_download_failure_says_what_to_put_where(no_network: Path) -> None:
    with pytest.raises(PretrainedWeightsError) as err:
        build_model(f"timm:{TIMM_SMALL}", num_classes=5, in_channels=3, pretrained=True)
    message = str(err.value)
    folder = no_network / "hf" / "models--timm--mobilenetv3_small_050.lamb_in1k"
    assert f"'timm:{TIMM_SMALL}'" in message and f"https://huggingface.co/{TIMM_REPO}" in message
    assert f"hf download {TIMM_REPO}" in message and f"to {folder}" in message
    assert "model.pretrained: false to train from scratch" in message


def test_timm_weights_in_the_hub_cache_load_without_network(no_network: Path) -> None:
    # The Hub cache layout: refs/main names a snapshot folder holding the files.
    repo = no_network / "hf" / f"models--{TIMM_REPO.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    state = timm.create_model(TIMM_SMALL).state_dict()  # random, 1000 classes, RGB
    safetensors.torch.save_file(state, snapshot / "model.safetensors")
    model = build_model(f"timm:{TIMM_SMALL}", num_classes=5, in_channels=1, pretrained=True)
    loaded = model.net.state_dict()  # type: ignore[union-attr]
    stem = loaded["conv_stem.weight"]
    assert stem.shape[1] == 1 and torch.allclose(stem, state["conv_stem.weight"].sum(1, True))
    for key, value in state.items():
        if key != "conv_stem.weight" and not key.startswith("classifier."):
            assert torch.equal(loaded[key], value), key
    assert loaded["classifier.weight"].shape == (5, 1024)
