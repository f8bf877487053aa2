"""BatchNorm running statistics recomputed after training, from raw or from raw and mixed images.

Training leaves each BatchNorm layer's running mean and variance as a moving average over the
batches it forwarded: augmented images, and for RankMixup (``loss.mixed_bn: update``) also their
mixed copies. Those statistics, not the weights, decide much of how confident the network is at
test time (README, "What BatchNorm does to the ranking losses"). Here they are recomputed for a
trained network without changing a weight: from the raw training images (``raw``), or from each
raw batch followed by its mixed copies, as a RankMixup step forwards them (``mixed``), which
gives a CE model the statistics a ranking loss's training would have given it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.data.mixup import apply_plan, sample_plans
from pipeline.preprocessing import to_model_input


@dataclass(frozen=True)
class Mixing:
    """Mixed copies to follow every raw batch: ``copies`` of them, lambda ~ Beta(alpha, alpha),
    drawn from a generator seeded with ``seed``, as a RankMixup step with ``loss.mixing`` makes
    them: blends of the input (``layer`` 0), CutMix boxes of it (``cutmix``), or blends of the
    hidden state at mix ``layer`` (Manifold Mixup), where the layers before it see only the raw
    batch."""

    alpha: float
    copies: int
    seed: int = 0
    layer: int = 0
    cutmix: bool = False


def tracking_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics (torch's, SyncBatchNorm
    and :class:`pipeline.distributed.AllReduceBatchNorm2d` alike)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` keeps running statistics anywhere."""
    return bool(tracking_batchnorms(model))


def recompute_bn(
    model: nn.Module,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    *,
    indices: np.ndarray | None = None,
    mixing: Mixing | None = None,
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics come from ``images`` alone, or,
    with ``mixing``, from each raw batch and then its mixed copies stacked in one batch.

    Args:
        model: A trained network (left unchanged).
        images: uint8 (N, H, W, C) images (an array or a memory map), preprocessed as
            evaluation does: no augmentation.
        mean: Per-channel normalisation mean ([0, 1] scale).
        std: Per-channel normalisation standard deviation.
        batch_size: Raw images per batch.
        indices: The rows of ``images`` to use, in order (default: all); read a batch at a
            time, so a memory-mapped dataset is not loaded whole.
        mixing: Mixed copies after every raw batch (``pipeline.data.mixup``'s plans: one lambda
            and permutation per copy, as a training step draws them); None: raw only. At a
            hidden layer (``mixing.layer`` > 0) ``model`` must be a MixableNet.

    Returns:
        The copy, in eval mode. Each running mean is the average of the batches' means and each
        running variance the average of their unbiased variances (``update_bn``'s cumulative
        average, what SWA uses), so one batch gives exactly that batch's mean and variance, and
        with mixing the raw and the mixed batches weigh alike, as they nearly do in training's
        alternating moving average. The same inputs give the same statistics again: they are
        reset first.
    """
    fresh = copy.deepcopy(model)
    device = next(fresh.parameters()).device
    rows = np.arange(len(images)) if indices is None else np.asarray(indices)
    # update_bn resets the statistics and averages every BatchNorm forward of the batches it
    # is given; the step module forwards each raw batch and then its mixed copies.
    torch.optim.swa_utils.update_bn(
        (
            x.to(device).contiguous(memory_format=torch.channels_last)
            for x in _batches(images, rows, mean, std, batch_size)
        ),
        fresh if mixing is None else _MixedStep(fresh, mixing),
    )
    return fresh.eval()


class _MixedStep(nn.Module):
    """Forwards a raw batch as a RankMixup step does: the raw pass, then the mixed copies (from
    the input, or from the hidden state at ``mixing.layer``, which needs a MixableNet)."""

    def __init__(self, net: nn.Module, mixing: Mixing) -> None:
        super().__init__()
        self.net = net
        self.mixing = mixing
        self.rng = np.random.default_rng(mixing.seed)

    def forward(self, x: torch.Tensor) -> None:
        layer = self.mixing.layer
        if layer == 0:
            hidden, rest = x, self.net
        else:
            hidden = self.net.features(x, layer)
            rest = functools.partial(self.net.head_from, layer=layer)
        rest(hidden)
        if len(x) > 1:
            hw = tuple(x.shape[-2:]) if self.mixing.cutmix else None
            plans = sample_plans(
                len(x), self.mixing.copies, self.mixing.alpha, self.rng, cutmix_hw=hw
            )
            rest(torch.cat([apply_plan(hidden, plan) for plan in plans]))


def _batches(
    images: np.ndarray,
    rows: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
) -> Iterator[torch.Tensor]:
    for start in range(0, len(rows), batch_size):
        if start > 0 and len(rows) - start < 2:
            break  # as training drops it: one image has no spread, and 1x1 maps would fail
        chunk = images[np.sort(rows[start : start + batch_size])]
        yield torch.from_numpy(to_model_input(chunk, list(mean), list(std)))
