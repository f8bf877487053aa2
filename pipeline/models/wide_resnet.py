"""Pre-activation Wide ResNets as :class:`SegmentedNet` segments.

References:
    Zagoruyko & Komodakis 2016, "Wide Residual Networks".
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.base import MixableNet, SegmentedNet, init_weights

BASE_WIDTHS: tuple[int, ...] = (16, 32, 64)
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2)


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3, plus a shortcut.

    When the block changes shape, the 1x1 projection shortcut reads the pre-activated input, as
    in the reference implementation; otherwise the shortcut is the raw input.

    References:
        Zagoruyko & Komodakis 2016, "Wide Residual Networks".

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution and the shortcut.
        dropout: Dropout probability between the two convolutions.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.projection = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Feature map of shape ``(B, in_planes, H, W)``.

        Returns:
            Feature map of shape ``(B, planes, H / stride, W / stride)``.
        """
        act = self.relu(self.bn1(x))
        shortcut = x if self.projection is None else self.projection(act)
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


def wide_resnet(
    depth: int,
    widen: int,
    *,
    num_classes: int,
    in_channels: int,
    dropout: float = 0.0,
) -> MixableNet:
    """Build WRN-``depth``-``widen`` with segments stage 1 (incl. stem), stage 2, stage 3, head.

    Mix layer ``k`` is "after stage ``k``"; the default is 3, the last stage's output. The
    head holds the final BN-ReLU because pre-activation blocks leave their output un-normalised.

    References:
        Zagoruyko & Komodakis 2016, "Wide Residual Networks".

    Args:
        depth: Total depth; must satisfy ``(depth - 4) % 6 == 0``.
        widen: Width multiplier applied to the base widths 16, 32, 64.
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
        dropout: Dropout probability inside each block.

    Returns:
        The network, with mix layers 0 (input) to 3 (after stage 3).

    Raises:
        ValueError: If ``depth``, ``widen`` or ``dropout`` is invalid.
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
    if widen < 1:
        raise ValueError(f"WRN widen factor must be >= 1, got {widen}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    blocks_per_stage = (depth - 4) // 6
    stem = nn.Conv2d(in_channels, BASE_WIDTHS[0], 3, padding=1, bias=False)
    stages: list[nn.Module] = []
    in_planes = BASE_WIDTHS[0]
    for base, stride in zip(BASE_WIDTHS, STAGE_STRIDES, strict=True):
        planes = base * widen
        blocks = [
            WideBasicBlock(
                in_planes if i == 0 else planes, planes, stride if i == 0 else 1, dropout
            )
            for i in range(blocks_per_stage)
        ]
        in_planes = planes
        stages.append(nn.Sequential(*blocks))
    stages[0] = nn.Sequential(stem, stages[0])
    head = nn.Sequential(
        nn.BatchNorm2d(in_planes),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(in_planes, num_classes),
    )
    model = SegmentedNet([*stages, head], default_manifold_layer=3)
    init_weights(model)
    return model


def wrn28_10(*, num_classes: int, in_channels: int) -> MixableNet:
    """WRN-28-10 without dropout.

    References:
        Zagoruyko & Komodakis 2016, "Wide Residual Networks".

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Returns:
        The network.
    """
    return wide_resnet(28, 10, num_classes=num_classes, in_channels=in_channels)


def wrn16_4(*, num_classes: int, in_channels: int) -> MixableNet:
    """WRN-16-4 without dropout; a cheap member of the family for quick experiments.

    References:
        Zagoruyko & Komodakis 2016, "Wide Residual Networks".

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Returns:
        The network.
    """
    return wide_resnet(16, 4, num_classes=num_classes, in_channels=in_channels)
