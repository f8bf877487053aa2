"""Segmented network base class that exposes hidden states for manifold mixup.

References:
    Verma et al. 2019, "Manifold Mixup: Better Representations by Interpolating Hidden States".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MixableNet(nn.Module):
    """A network built as an ordered list of segments, the last of which produces logits.

    Mix layer ``0`` is the input image and mix layer ``k`` (``1 <= k < num_segments``) is the
    output of segment ``k``. The logits are deliberately not a mix point: no segment would be left
    to process the mixture, so it would no longer be manifold mixup.

    References:
        Verma et al. 2019, "Manifold Mixup: Better Representations by Interpolating Hidden States".

    Args:
        segments: Modules run in order; the final one maps features to logits.
        default_manifold_layer: Mix layer a trainer should use when none is configured.

    Raises:
        ValueError: If fewer than one segment is given or the default layer is out of range.
    """

    def __init__(self, segments: Sequence[nn.Module], default_manifold_layer: int) -> None:
        super().__init__()
        if len(segments) < 1:
            raise ValueError(f"need at least one segment, got {len(segments)}")
        self.segments = nn.ModuleList(segments)
        self._check_layer(default_manifold_layer)
        self._default_manifold_layer = default_manifold_layer

    @property
    def num_mix_layers(self) -> int:
        """Number of places mixing is allowed: the input plus every non-final segment output."""
        return len(self.segments)

    @property
    def default_manifold_layer(self) -> int:
        """Mix layer recommended for this architecture."""
        return self._default_manifold_layer

    def _check_layer(self, layer: int) -> None:
        # bool is an int subclass; True/False as a layer index is almost certainly a caller bug.
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"mix layer must be an int, got {layer!r}")
        if not 0 <= layer < self.num_mix_layers:
            raise ValueError(
                f"mix layer {layer} out of range; valid layers are 0..{self.num_mix_layers - 1}"
            )

    def features(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Run segments ``1..layer`` on ``x``.

        Args:
            x: Input images of shape ``(B, C, H, W)``.
            layer: Mix layer whose activations to return; ``0`` returns ``x`` itself.

        Returns:
            The hidden state at ``layer``.

        Raises:
            ValueError: If ``layer`` is not in ``0..num_mix_layers - 1``.
        """
        self._check_layer(layer)
        for segment in self.segments[:layer]:
            x = segment(x)
        return x

    def head_from(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Run the remaining segments from mix layer ``layer`` through to the logits.

        Args:
            h: Hidden state at ``layer``, e.g. as returned by :meth:`features`, possibly mixed.
            layer: Mix layer that ``h`` belongs to.

        Returns:
            Logits of shape ``(B, num_classes)``.

        Raises:
            ValueError: If ``layer`` is not in ``0..num_mix_layers - 1``.
        """
        self._check_layer(layer)
        for segment in self.segments[layer:]:
            h = segment(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute logits for ``x``.

        Args:
            x: Input images of shape ``(B, C, H, W)``.

        Returns:
            Logits of shape ``(B, num_classes)``.
        """
        for segment in self.segments:
            x = segment(x)
        return x


class ClassifierHead(nn.Sequential):
    """Adaptive average pool to a ``grid`` x ``grid`` map, flatten and a linear layer.

    Adaptive pooling lets every architecture accept any spatial size its strides can reduce.
    ``grid=1`` is the usual global average pool; a larger grid keeps coarse layout, which lets
    shallow networks learn much faster on centred images.

    Args:
        in_features: Channels of the incoming feature map.
        num_classes: Number of output logits.
        grid: Side of the pooled feature map.
    """

    def __init__(self, in_features: int, num_classes: int, grid: int = 1) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(grid),
            nn.Flatten(),
            nn.Linear(in_features * grid * grid, num_classes),
        )


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions and identity batch norms; linear layers keep torch defaults.

    References:
        He et al. 2015, "Delving Deep into Rectifiers" (Kaiming initialisation).

    Args:
        module: Network whose submodules are initialised in place.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
