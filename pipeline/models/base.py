"""The mixable-classifier interface, its segmented implementation, and fine-tuning groups.

References:
    Verma et al. 2019, "Manifold Mixup: Better Representations by Interpolating Hidden States".
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

Stage = Callable[[torch.Tensor], torch.Tensor]


class MixableNet(nn.Module, metaclass=abc.ABCMeta):
    """A classifier whose forward pass splits into stages at the places mixing is allowed.

    Mix layer ``0`` is the input image and mix layer ``k`` (``1 <= k < num_mix_layers``) is the
    output of stage ``k``; the last stage produces the logits. The logits are deliberately not a
    mix point: no stage would be left to process the mixture, so it would no longer be manifold
    mixup. A network with a single stage can only mix its input.

    Subclasses provide :meth:`_stages`, :attr:`head` and :attr:`default_manifold_layer`;
    :meth:`features`, :meth:`head_from` and :meth:`forward` are shared. :func:`build_model
    <pipeline.models.build_model>` sets :attr:`arch` to the name it was built from, so error
    messages can name it.

    References:
        Verma et al. 2019, "Manifold Mixup: Better Representations by Interpolating Hidden States".
    """

    arch: str = ""

    @abc.abstractmethod
    def _stages(self) -> Sequence[Stage]:
        """The forward pass as an ordered list of callables, the last of which gives logits."""

    @property
    @abc.abstractmethod
    def head(self) -> nn.Module:
        """The classifier that fine-tuning trains at the full learning rate (see param_groups)."""

    @property
    @abc.abstractmethod
    def default_manifold_layer(self) -> int:
        """Mix layer recommended for this architecture."""

    @property
    def num_mix_layers(self) -> int:
        """Number of places mixing is allowed: the input plus every non-final stage output."""
        return len(self._stages())

    def _check_layer(self, layer: int) -> None:
        # bool is an int subclass; True/False as a layer index is almost certainly a caller bug.
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"mix layer must be an int, got {layer!r}")
        if not 0 <= layer < self.num_mix_layers:
            raise ValueError(
                f"mix layer {layer} out of range; valid layers are 0..{self.num_mix_layers - 1}"
            )

    def features(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Run stages ``1..layer`` on ``x``.

        Args:
            x: Input images of shape ``(B, C, H, W)``.
            layer: Mix layer whose activations to return; ``0`` returns ``x`` itself.

        Returns:
            The hidden state at ``layer``.

        Raises:
            ValueError: If ``layer`` is not in ``0..num_mix_layers - 1``.
        """
        self._check_layer(layer)
        for stage in self._stages()[:layer]:
            x = stage(x)
        return x

    def head_from(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Run the remaining stages from mix layer ``layer`` through to the logits.

        Args:
            h: Hidden state at ``layer``, e.g. as returned by :meth:`features`, possibly mixed.
            layer: Mix layer that ``h`` belongs to.

        Returns:
            Logits of shape ``(B, num_classes)``.

        Raises:
            ValueError: If ``layer`` is not in ``0..num_mix_layers - 1``.
        """
        self._check_layer(layer)
        for stage in self._stages()[layer:]:
            h = stage(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute logits for ``x``.

        Args:
            x: Input images of shape ``(B, C, H, W)``.

        Returns:
            Logits of shape ``(B, num_classes)``.
        """
        for stage in self._stages():
            x = stage(x)
        return x


class SegmentedNet(MixableNet):
    """A :class:`MixableNet` built as an ordered list of segment modules; the last is the head.

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

    def _stages(self) -> Sequence[Stage]:
        return self.segments

    @property
    def head(self) -> nn.Module:
        """The last segment."""
        return self.segments[-1]

    @property
    def default_manifold_layer(self) -> int:
        """Mix layer recommended for this architecture."""
        return self._default_manifold_layer


def param_groups(model: MixableNet, lr: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Optimiser parameter groups: the head at ``lr``, everything else at a scaled rate.

    Fine-tuning a pretrained backbone usually wants a fresh head to learn fast while the
    pretrained layers move slowly; ``backbone_lr_scale=1`` gives one learning rate for all.
    Each group carries a ``name`` (``"head"`` or ``"backbone"``) for logging; empty groups are
    left out (optimisers reject them).

    Args:
        model: The network; its :attr:`~MixableNet.head` defines the head group.
        lr: Learning rate of the head; > 0.
        backbone_lr_scale: Factor applied to ``lr`` for all other parameters; >= 0.

    Returns:
        Groups for a ``torch.optim`` optimiser, head first.

    Raises:
        ValueError: If ``lr`` or ``backbone_lr_scale`` is out of range.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not backbone_lr_scale >= 0:
        raise ValueError(f"backbone_lr_scale must be >= 0, got {backbone_lr_scale}")
    head = list(model.head.parameters())
    in_head = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in in_head]
    groups = [
        {"name": "head", "params": head, "lr": lr},
        {"name": "backbone", "params": rest, "lr": lr * backbone_lr_scale},
    ]
    return [g for g in groups if g["params"]]


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
