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
    drawn from a generator seeded with ``seed``."""

    alpha: float
    copies: int
    seed: int = 0


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
            and permutation per copy, as a training step draws them); None: raw only.

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
    torch.optim.swa_utils.update_bn(
        (
            x.to(device).contiguous(memory_format=torch.channels_last)
            for x in _batches(images, rows, mean, std, batch_size, mixing)
        ),
        fresh,
    )
    return fresh.eval()


def _batches(
    images: np.ndarray,
    rows: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    mixing: Mixing | None,
) -> Iterator[torch.Tensor]:
    rng = np.random.default_rng(mixing.seed if mixing else 0)
    for start in range(0, len(rows), batch_size):
        if start > 0 and len(rows) - start < 2:
            break  # as training drops it: one image has no spread, and 1x1 maps would fail
        chunk = images[np.sort(rows[start : start + batch_size])]
        x = torch.from_numpy(to_model_input(chunk, list(mean), list(std)))
        yield x
        if mixing is not None and len(x) > 1:
            plans = sample_plans(len(x), mixing.copies, mixing.alpha, rng)
            yield torch.cat([apply_plan(x, plan) for plan in plans])
