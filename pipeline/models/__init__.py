"""Image classifiers that expose their hidden states for manifold mixup.

Every architecture is a :class:`MixableNet`: ``features(x, layer)`` and ``head_from(h, layer)``
split the forward pass at any mix layer, so a trainer can interpolate hidden states. Besides the
built-in networks of :data:`ARCHS`, ``model.arch`` may name any torchvision classifier as
``tv:<name>`` or timm model as ``timm:<name>`` (see :mod:`pipeline.models.backbones`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from pipeline.models.backbones import (
    TIMM_PREFIX,
    TV_PREFIX,
    BackboneNet,
    build_timm,
    build_torchvision,
)
from pipeline.models.base import MixableNet, SegmentedNet, param_groups
from pipeline.models.pretrained import PretrainedWeightsError
from pipeline.models.resnet import resnet18, resnet34, resnet50
from pipeline.models.small_cnn import small_cnn
from pipeline.models.weights import WeightsError
from pipeline.models.wide_resnet import wide_resnet, wrn16_4, wrn28_10

__all__ = [
    "ARCHS",
    "DEFAULT_ARCH",
    "BackboneNet",
    "MixableNet",
    "PretrainedWeightsError",
    "SegmentedNet",
    "WeightsError",
    "build_model",
    "check_arch",
    "param_groups",
    "wide_resnet",
]

DEFAULT_ARCH = "small_cnn"

ARCHS: dict[str, Callable[..., MixableNet]] = {
    "small_cnn": small_cnn,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "wrn16_4": wrn16_4,
    "wrn28_10": wrn28_10,
}


def _unknown(arch: str, what: str, names: list[str]) -> ValueError:
    close = difflib.get_close_matches(arch.split(":", 1)[-1], names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown model.arch {arch!r}: not a {what}{hint}")


def check_arch(arch: str) -> None:
    """Check that ``arch`` names a model :func:`build_model` can build, without building it.

    Args:
        arch: A key of :data:`ARCHS`, ``tv:<name>`` (a torchvision classification model, see
            ``torchvision.models.list_models(module=torchvision.models)``) or ``timm:<name>``
            (see ``timm.list_models()``; a pretrained tag such as ``.a1_in1k`` may follow).

    Raises:
        ValueError: If ``arch`` is none of these; the message lists what is accepted.
    """
    if arch in ARCHS:
        return
    if arch.startswith(TV_PREFIX):
        import torchvision  # lazy: importing torchvision costs seconds

        names = torchvision.models.list_models(module=torchvision.models)
        if arch.removeprefix(TV_PREFIX) not in names:
            raise _unknown(arch, "torchvision classification model", names)
        return
    if arch.startswith(TIMM_PREFIX):
        import timm  # lazy: timm is only needed for backbones

        if not timm.is_model(arch.removeprefix(TIMM_PREFIX)):
            raise _unknown(arch, "timm model", timm.list_models())
        return
    raise ValueError(
        f"unknown model.arch {arch!r}; choose a built-in network ({', '.join(ARCHS)}), "
        f"{TV_PREFIX}<name> for a torchvision classifier (e.g. {TV_PREFIX}resnet18) or "
        f"{TIMM_PREFIX}<name> for a timm model (e.g. {TIMM_PREFIX}resnet50)"
    )


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    pretrained: bool = False,
    weights: Path | None = None,
) -> MixableNet:
    """Instantiate an architecture.

    Args:
        arch: Key of :data:`ARCHS`, e.g. ``"small_cnn"``, or ``tv:<name>`` / ``timm:<name>``
            (see :func:`check_arch`).
        num_classes: Number of output logits; at least 2.
        in_channels: Channels of the input images, e.g. 1 for Fashion-MNIST, 3 for CIFAR.
        pretrained: Start a ``tv:``/``timm:`` backbone from its pretrained weights (downloaded
            into the library's cache on first use); built-in networks have none.
        weights: Start a ``tv:``/``timm:`` backbone from this local file instead (see
            :mod:`pipeline.models.weights`): the offline route to the same thing.

    Returns:
        The network, with :attr:`MixableNet.arch` set to ``arch``.

    Raises:
        ValueError: If ``arch`` is unknown, a size argument is out of range, ``pretrained`` or
            ``weights`` is asked of a built-in network, or both are given.
        PretrainedWeightsError: If pretrained weights cannot be fetched.
        WeightsError: If ``weights`` cannot be read or does not fit the backbone exactly.
    """
    check_arch(arch)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if pretrained and weights is not None:
        raise ValueError("give pretrained weights one way: pretrained or a weights file, not both")
    sizes = {"num_classes": num_classes, "in_channels": in_channels}
    if arch.startswith(TV_PREFIX):
        name = arch.removeprefix(TV_PREFIX)
        return build_torchvision(name, **sizes, pretrained=pretrained, weights=weights)
    if arch.startswith(TIMM_PREFIX):
        name = arch.removeprefix(TIMM_PREFIX)
        return build_timm(name, **sizes, pretrained=pretrained, weights=weights)
    if pretrained or weights is not None:
        raise ValueError(
            f"model.arch {arch!r} is a built-in network without pretrained weights; set "
            f"model.pretrained: false or use a {TV_PREFIX} or {TIMM_PREFIX} backbone"
        )
    model = ARCHS[arch](**sizes)
    model.arch = arch
    return model
