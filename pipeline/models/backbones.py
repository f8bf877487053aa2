"""External backbones: any torchvision or timm classifier as a :class:`MixableNet`.

``model.arch`` values ``tv:<name>`` build ``torchvision.models.get_model(name)`` and
``timm:<name>`` build ``timm.create_model(name)``; :class:`BackboneNet` wraps either so the
trainer, the export and the checkpoints treat it like a built-in network.

Head: timm sizes it through ``num_classes``; for torchvision the final ``nn.Linear`` (at ``fc``,
``classifier[-1]``, ``head`` or ``heads.head``) is replaced by a fresh one with ``num_classes``
outputs. A family whose head is none of these raises a ValueError naming the arch.

Input channels: timm gets ``in_chans`` and adapts pretrained first-conv weights itself (summed
over RGB for one channel, tiled and rescaled for more). torchvision has no such argument, so
its first convolution is replaced by one with ``in_channels`` inputs whose weights are the
3-channel ones — pretrained or as the family initialised them — passed through timm's own
``adapt_input_conv``: the same rule as timm (one rule for both), and it keeps the stem's output
scale the one the network was trained or designed for.

Manifold mixup: timm models split at ``forward_features`` (mix layer 1) and ``forward_head``.
torchvision ResNets (and ResNeXt, Wide ResNet) split after the stem plus ``layer1``, after
``layer2``, ``layer3`` and ``layer4`` (mix layers 1-4, as the built-in ResNets); EfficientNet,
MobileNet v2/v3, ConvNeXt, VGG, AlexNet, DenseNet and RegNet split after their feature extractor
(mix layer 1). Other families can mix their input only (``num_mix_layers == 1``). The default mix
layer is always the last one before pooling.

Pretrained weights download into the libraries' usual caches: torchvision's into
``$TORCH_HOME/hub/checkpoints/`` (a file found there is loaded as is: ``torch.hub`` checks the
hash in the file name only when it downloads), timm's from the Hugging Face Hub into
``$HF_HOME/hub``. When that fails, :class:`~pipeline.models.pretrained.PretrainedWeightsError`
says what to put where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from pipeline.models.base import MixableNet, Stage
from pipeline.models.pretrained import timm_weights_error, timm_weights_source, tv_weights_error
from pipeline.models.weights import load_backbone_weights

TV_PREFIX = "tv:"
TIMM_PREFIX = "timm:"
# Where torchvision classifiers keep their final Linear, tried in order; a Sequential means
# its last module. Covers ResNet, RegNet, ShuffleNet, GoogLeNet, Inception (fc), EfficientNet,
# MobileNet, MNASNet, ConvNeXt, VGG, AlexNet, DenseNet, MaxViT (classifier), Swin (head), ViT.
_TV_HEAD_PATHS = ("fc", "classifier", "head", "heads.head")


class BackboneNet(MixableNet):
    """A torchvision or timm classifier exposing the :class:`MixableNet` interface.

    The wrapped network stays intact under ``net`` (its state-dict keys keep the library's
    names); ``forward`` is its own forward, and the split used by :meth:`features` and
    :meth:`head_from` is recomputed from ``net`` at each call, so a deep copy splits itself.

    Args:
        net: The classifier, already sized to the dataset's classes and channels.
        arch: The ``model.arch`` it was built from, e.g. ``"tv:resnet18"``.
        split: Key of the split rule (see the module docstring), or None for input mixing only.
        head_paths: Submodule paths of the classifier layers (the fine-tuning head).

    Raises:
        ValueError: If ``split`` is unknown.
    """

    def __init__(
        self, net: nn.Module, *, arch: str, split: str | None, head_paths: Sequence[str]
    ) -> None:
        super().__init__()
        if split is not None and split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(_SPLITS)}")
        self.net = net
        self.arch = arch
        self._split = split
        self._head_paths = tuple(head_paths)

    def _stages(self) -> Sequence[Stage]:
        return [self.net] if self._split is None else _SPLITS[self._split](self.net)

    @property
    def head(self) -> nn.Module:
        """The classifier layer(s) sized to ``num_classes``."""
        heads = [self.net.get_submodule(p) for p in self._head_paths]
        return heads[0] if len(heads) == 1 else nn.ModuleList(heads)

    @property
    def default_manifold_layer(self) -> int:
        """The last mix layer: the features right before pooling (0 without a split)."""
        return self.num_mix_layers - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute logits with the wrapped network's own forward."""
        return self.net(x)


def _resnet(net: Any) -> list[Stage]:
    def stem_and_layer1(x: torch.Tensor) -> torch.Tensor:
        return net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))

    def head(h: torch.Tensor) -> torch.Tensor:
        return net.fc(torch.flatten(net.avgpool(h), 1))

    return [stem_and_layer1, net.layer2, net.layer3, net.layer4, head]


def _pool_flatten_classifier(net: Any) -> list[Stage]:
    return [net.features, lambda h: net.classifier(torch.flatten(net.avgpool(h), 1))]


def _convnext(net: Any) -> list[Stage]:
    # ConvNeXt's classifier starts with LayerNorm2d and flattens itself.
    return [net.features, lambda h: net.classifier(net.avgpool(h))]


def _mobilenet_v2(net: Any) -> list[Stage]:
    return [
        net.features,
        lambda h: net.classifier(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)),
    ]


def _densenet(net: Any) -> list[Stage]:
    # torchvision applies this ReLU in place; out of place leaves a mixed input untouched.
    return [
        net.features,
        lambda h: net.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(h), 1), 1)),
    ]


def _regnet(net: Any) -> list[Stage]:
    return [
        lambda x: net.trunk_output(net.stem(x)),
        lambda h: net.fc(net.avgpool(h).flatten(start_dim=1)),
    ]


def _timm(net: Any) -> list[Stage]:
    return [net.forward_features, net.forward_head]


_SPLITS: dict[str, Callable[[Any], list[Stage]]] = {
    "resnet": _resnet,
    "pool_flatten_classifier": _pool_flatten_classifier,
    "convnext": _convnext,
    "mobilenet_v2": _mobilenet_v2,
    "densenet": _densenet,
    "regnet": _regnet,
    "timm": _timm,
}


def _tv_split(net: nn.Module) -> str | None:
    """The split rule of a torchvision classifier's exact class (a subclass may change forward)."""
    from torchvision import models as tvm  # lazy: importing torchvision costs seconds

    rules = {
        tvm.ResNet: "resnet",
        tvm.EfficientNet: "pool_flatten_classifier",
        tvm.MobileNetV3: "pool_flatten_classifier",
        tvm.VGG: "pool_flatten_classifier",
        tvm.AlexNet: "pool_flatten_classifier",
        tvm.ConvNeXt: "convnext",
        tvm.MobileNetV2: "mobilenet_v2",
        tvm.DenseNet: "densenet",
        tvm.RegNet: "regnet",
    }
    return rules.get(type(net))


def _tv_head_path(net: nn.Module, arch: str) -> str:
    for path in _TV_HEAD_PATHS:
        try:
            module = net.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.Sequential) and len(module) > 0:
            path, module = f"{path}.{len(module) - 1}", module[-1]
        if isinstance(module, nn.Linear):
            return path
    raise ValueError(
        f"model.arch {arch!r}: cannot find its classification head (no nn.Linear at "
        f"{', '.join(_TV_HEAD_PATHS)} or their last element); use another tv: model or timm:"
    )


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _adapt_first_conv(net: nn.Module, in_channels: int, arch: str) -> None:
    """Replace the first (RGB) convolution by one taking ``in_channels``, weights adapted."""
    from timm.models import adapt_input_conv  # lazy: timm is only needed for backbones

    path, conv = next(
        ((p, m) for p, m in net.named_modules() if isinstance(m, nn.Conv2d)), ("", None)
    )
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        found = "none" if conv is None else f"{path!r} with {conv.in_channels} input channels"
        raise ValueError(
            f"model.arch {arch!r}: cannot adapt its first convolution to {in_channels} "
            f"channels; expected an ungrouped RGB Conv2d, found {found}"
        )
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_channels, conv.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_submodule(net, path, new)


def _drop_aux_heads(net: nn.Module, in_channels: int) -> None:
    """Remove GoogLeNet's and Inception v3's auxiliary heads, so train mode returns one tensor."""
    # Done after building, as torchvision itself does: its builders reject aux_logits=False
    # together with weights.
    from torchvision.models import GoogLeNet, Inception3

    if isinstance(net, GoogLeNet | Inception3):
        net.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(net, name):
                setattr(net, name, None)
        if in_channels != 3:
            net.transform_input = False  # it re-normalises three RGB channels one by one


def _start_pretrained(
    net: nn.Module, head_paths: Sequence[str], *, arch: str, pretrained: bool, weights: Path | None
) -> None:
    """Load ``weights`` into the backbone, and give a pretrained backbone a zero head.

    Zero head: a pretrained network's features are large (timm's EfficientNet-Lite0 gave logits
    up to 31 on the first batch through its freshly initialised 4-class head, cross-entropy 6.3
    where chance is 1.4), and with gradient clipping the first epochs then go to shrinking the
    head instead of learning. A zero head starts every class at the same confidence; its first
    gradient is the features themselves. (BiT and timm's ``head_init_scale`` do the same.)
    """
    if weights is not None:
        head_keys = [f"{p}.{k}" for p in head_paths for k in net.get_submodule(p).state_dict()]
        load_backbone_weights(net, weights, head_keys, arch=arch)
    if weights is None and not pretrained:
        return
    with torch.no_grad():
        for path in head_paths:
            for param in net.get_submodule(path).parameters():
                param.zero_()


def build_torchvision(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    pretrained: bool,
    weights: Path | None = None,
) -> BackboneNet:
    """Build ``tv:<name>`` with a ``num_classes`` head and ``in_channels`` inputs.

    Args:
        name: A torchvision classification model, e.g. ``"resnet18"``.
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
        pretrained: Start from the model's default ImageNet weights (downloaded once).
        weights: A local weights file to start from instead (see
            :mod:`pipeline.models.weights`).

    Returns:
        The wrapped network.

    Raises:
        PretrainedWeightsError: If the weights cannot be fetched.
        WeightsError: If ``weights`` cannot be read or does not fit the backbone.
        ValueError: If the head or the first convolution cannot be found.
    """
    import torchvision  # lazy: importing torchvision costs seconds

    arch = TV_PREFIX + name
    published = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    try:
        net = torchvision.models.get_model(name, weights=published)
    except OSError as err:  # URLError, HTTPError, timeouts: all OSErrors
        if published is None:
            raise
        raise tv_weights_error(arch, published, err) from err
    _drop_aux_heads(net, in_channels)
    head_path = _tv_head_path(net, arch)
    old = net.get_submodule(head_path)
    assert isinstance(old, nn.Linear)  # _tv_head_path returns Linear layers only
    _set_submodule(net, head_path, nn.Linear(old.in_features, num_classes, old.bias is not None))
    if in_channels != 3:
        _adapt_first_conv(net, in_channels, arch)
    _start_pretrained(net, [head_path], arch=arch, pretrained=pretrained, weights=weights)
    return BackboneNet(net, arch=arch, split=_tv_split(net), head_paths=[head_path])


def build_timm(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    pretrained: bool,
    weights: Path | None = None,
) -> BackboneNet:
    """Build ``timm:<name>`` with a ``num_classes`` head and ``in_channels`` inputs.

    Args:
        name: A timm model, optionally with a pretrained tag, e.g. ``"resnet10t.c3_in1k"``.
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
        pretrained: Start from the model's pretrained weights (from the Hugging Face Hub).
        weights: A local weights file to start from instead (see
            :mod:`pipeline.models.weights`).

    Returns:
        The wrapped network.

    Raises:
        PretrainedWeightsError: If the weights cannot be fetched.
        WeightsError: If ``weights`` cannot be read or does not fit the backbone.
        ValueError: If ``pretrained`` is set and timm has no weights for ``name``.
    """
    import timm  # lazy: timm is only needed for backbones

    arch = TIMM_PREFIX + name
    source = timm_weights_source(name, arch) if pretrained else None
    try:
        net = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels
        )
    except OSError as err:  # huggingface_hub's and urllib's download errors are OSErrors
        if source is None:
            raise
        raise timm_weights_error(arch, source, err) from err
    has_split = hasattr(net, "forward_features") and hasattr(net, "forward_head")
    classifier = net.get_classifier()
    heads = classifier if isinstance(classifier, tuple | list) else (classifier,)
    paths = {id(m): p for p, m in net.named_modules()}
    head_paths = [paths[id(m)] for m in heads]
    _start_pretrained(net, head_paths, arch=arch, pretrained=pretrained, weights=weights)
    return BackboneNet(net, arch=arch, split="timm" if has_split else None, head_paths=head_paths)
