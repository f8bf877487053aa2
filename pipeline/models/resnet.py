"""CIFAR-style ResNets (3x3 stride-1 stem, no max-pool) as :class:`SegmentedNet` segments.

References:
    He et al. 2016, "Deep Residual Learning for Image Recognition".
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.base import ClassifierHead, MixableNet, SegmentedNet, init_weights

STAGE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2)


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition".

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution and the shortcut.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Feature map of shape ``(B, in_planes, H, W)``.

        Returns:
            Feature map of shape ``(B, planes, H / stride, W / stride)``.
        """
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50).

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition".

    Args:
        in_planes: Input channels.
        planes: Bottleneck channels; the block outputs ``4 * planes``.
        stride: Stride of the 3x3 convolution and the shortcut.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Feature map of shape ``(B, in_planes, H, W)``.

        Returns:
            Feature map of shape ``(B, 4 * planes, H / stride, W / stride)``.
        """
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def resnet(
    block: type[BasicBlock | Bottleneck],
    blocks_per_stage: tuple[int, int, int, int],
    *,
    num_classes: int,
    in_channels: int,
) -> MixableNet:
    """Build a CIFAR-style ResNet whose segments are the four stages plus the head.

    The stem is folded into stage 1 so that mix layer ``k`` is exactly "after stage ``k``",
    matching the layer numbering of the manifold mixup reference code. The default mix layer
    is 4, the output of the last stage just before pooling.

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition";
        Verma et al. 2019, "Manifold Mixup: Better Representations by Interpolating Hidden States".

    Args:
        block: Residual block class.
        blocks_per_stage: Number of blocks in each of the four stages.
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Returns:
        The network, with mix layers 0 (input) to 4 (after stage 4).
    """
    stem = nn.Sequential(
        nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(STAGE_WIDTHS[0]),
        nn.ReLU(inplace=True),
    )
    stages: list[nn.Module] = []
    in_planes = STAGE_WIDTHS[0]
    for planes, stride, count in zip(STAGE_WIDTHS, STAGE_STRIDES, blocks_per_stage, strict=True):
        layers: list[nn.Module] = []
        for i in range(count):
            layers.append(block(in_planes, planes, stride if i == 0 else 1))
            in_planes = planes * block.expansion
        stages.append(nn.Sequential(*layers))
    stages[0] = nn.Sequential(stem, stages[0])
    model = SegmentedNet(
        [*stages, ClassifierHead(in_planes, num_classes)], default_manifold_layer=4
    )
    init_weights(model)
    return model


def resnet18(*, num_classes: int, in_channels: int) -> MixableNet:
    """CIFAR ResNet-18 (BasicBlock, 2-2-2-2).

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition".

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Returns:
        The network.
    """
    return resnet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


def resnet34(*, num_classes: int, in_channels: int) -> MixableNet:
    """CIFAR ResNet-34 (BasicBlock, 3-4-6-3).

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition".

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Returns:
        The network.
    """
    return resnet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


def resnet50(*, num_classes: int, in_channels: int) -> MixableNet:
    """CIFAR ResNet-50 (Bottleneck, 3-4-6-3).

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition".

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Returns:
        The network.
    """
    return resnet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)
