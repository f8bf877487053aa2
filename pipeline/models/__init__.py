"""Image classifiers that expose their hidden states for manifold mixup.

Every architecture is a :class:`MixableNet`: ``features(x, layer)`` and ``head_from(h, layer)``
split the forward pass at any mix layer, so a trainer can interpolate hidden states.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.models.base import MixableNet
from pipeline.models.resnet import resnet18, resnet34, resnet50
from pipeline.models.small_cnn import small_cnn
from pipeline.models.wide_resnet import wide_resnet, wrn16_4, wrn28_10

__all__ = ["ARCHS", "DEFAULT_ARCH", "MixableNet", "build_model", "wide_resnet"]

DEFAULT_ARCH = "small_cnn"

ARCHS: dict[str, Callable[..., MixableNet]] = {
    "small_cnn": small_cnn,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "wrn16_4": wrn16_4,
    "wrn28_10": wrn28_10,
}


def build_model(arch: str, *, num_classes: int, in_channels: int) -> MixableNet:
    """Instantiate a registered architecture.

    Args:
        arch: Key of :data:`ARCHS`, e.g. ``"small_cnn"`` or ``"resnet18"``.
        num_classes: Number of output logits; at least 2.
        in_channels: Channels of the input images, e.g. 1 for Fashion-MNIST, 3 for CIFAR.

    Returns:
        A freshly initialised network.

    Raises:
        ValueError: If ``arch`` is unknown or a size argument is out of range.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    return ARCHS[arch](num_classes=num_classes, in_channels=in_channels)
