"""A small VGG-style CNN sized to train in minutes on a 2-core CPU.

Widths and layer order were picked by measurement on 28x28x1 Fashion-MNIST (2 threads,
channels_last, batch 128): this network reaches about 91.7% test accuracy after 6 epochs of plain
SGD with a cosine schedule, at roughly 40 ms per SGD step. In a 4-epoch trial, doubling the widths
(32-64-128) cost about twice as much per step with no accuracy gain.

The head pools to 3x3 rather than 1x1: on centred images the coarse layout is highly informative,
and keeping it raised accuracy after 40 steps on 2,700 images from about 50% to about 70%, and
after 6 full epochs from 90.5% to 91.7%, for 5k extra parameters and no measurable time.

Where a block downsamples, max-pooling comes before batch norm and ReLU, so those two run on a
quarter of the activations; this cut the step time by about a quarter at no accuracy cost.

References:
    Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (conv-pool-BN-activation).
"""

from __future__ import annotations

from torch import nn

from pipeline.models.base import ClassifierHead, MixableNet, SegmentedNet, init_weights

WIDTHS: tuple[int, int, int] = (16, 32, 64)
HEAD_GRID = 3


def _conv_bn_relu(in_planes: int, out_planes: int, *, pool: bool = False) -> list[nn.Module]:
    conv = nn.Conv2d(in_planes, out_planes, 3, padding=1, bias=False)
    downsample = [nn.MaxPool2d(2)] if pool else []
    return [conv, *downsample, nn.BatchNorm2d(out_planes), nn.ReLU(inplace=True)]


def small_cnn(*, num_classes: int, in_channels: int) -> MixableNet:
    """Build the default small CNN with three conv blocks and a pooled linear head.

    Block 1: conv3x3(16)-maxpool-BN-ReLU. Block 2: conv3x3(32)-BN-ReLU, conv3x3(32)-maxpool-BN-ReLU.
    Block 3: conv3x3(64)-BN-ReLU. Head: adaptive average pool to 3x3, linear. The two max-pools
    mean any input of at least 4x4 works; the default mix layer 2 is the output of block 2.

    References:
        Verma et al. 2019, "Manifold Mixup: Better Representations by Interpolating Hidden States"
        (mix-layer interface); Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU"
        (pooling before batch norm).

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Returns:
        The network, with mix layers 0 (input) to 3 (after block 3).
    """
    w1, w2, w3 = WIDTHS
    block1 = nn.Sequential(*_conv_bn_relu(in_channels, w1, pool=True))
    block2 = nn.Sequential(*_conv_bn_relu(w1, w2), *_conv_bn_relu(w2, w2, pool=True))
    block3 = nn.Sequential(*_conv_bn_relu(w2, w3))
    model = SegmentedNet(
        [block1, block2, block3, ClassifierHead(w3, num_classes, grid=HEAD_GRID)],
        default_manifold_layer=2,
    )
    init_weights(model)
    return model
