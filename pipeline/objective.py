"""One training step's loss for every objective in ``params.yaml``'s ``loss`` section."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import Tensor, nn

from pipeline.bn_statistics import tracking_batchnorms
from pipeline.config import LossConfig
from pipeline.data.mixup import apply_plan, relevance, same_class, sample_plans
from pipeline.losses.baselines import focal_loss, label_smoothing_loss, mixup_loss
from pipeline.losses.rankmixup import mndcg_loss, mrl_loss
from pipeline.models import MixableNet


def mix_layer(model: MixableNet, cfg: LossConfig) -> int:
    """Where mixing happens: the input for Mixup/CutMix, a hidden layer for Manifold Mixup."""
    if cfg.mixing != "manifold":
        return 0
    if model.num_mix_layers == 1:
        raise ValueError(
            f"model.arch {model.arch!r} does not support Manifold Mixup: its forward pass has no "
            f"known split into hidden layers, so only the input can be mixed; set loss.mixing "
            f"to mixup or cutmix"
        )
    layer = model.default_manifold_layer if cfg.manifold_layer is None else cfg.manifold_layer
    if not 0 <= layer < model.num_mix_layers:
        raise ValueError(
            f"loss.manifold_layer must be in [0, {model.num_mix_layers - 1}] for model.arch "
            f"{model.arch!r}, got {layer}"
        )
    return layer


def compute_loss(
    model: MixableNet,
    x: Tensor,
    y: Tensor,
    cfg: LossConfig,
    rng: np.random.Generator,
    *,
    detach: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss of one batch and its parts (detached for logging, unless ``detach`` is
    False: then they keep their graph, to differentiate each part on its own).

    RankMixup (``mrl``, ``mndcg``) forwards the raw batch, then all mixed copies stacked
    copy-major in a second pass, so BatchNorm sees the raw batch, then the mixed batch, as in the
    official code. With ``mixed_bn: update`` (official) both passes move BatchNorm's running
    statistics, which evaluation uses; with ``freeze`` the mixed pass leaves them alone, so they
    are the raw images' only. Either way each pass normalises with its own batch statistics, so
    the losses and gradients of a step are the same. Cross-entropy is applied to the raw logits
    only; no loss uses the label mixture as a target. Deviation, for speed: Manifold Mixup mixes
    the hidden features of the raw pass instead of recomputing them in a second forward; in train
    mode the two are the same values, only BatchNorm's running statistics of the early layers are
    updated once, not twice.

    Args:
        model: The network.
        x: Normalised images (B, C, H, W).
        y: Labels (B,).
        cfg: The ``loss`` section.
        rng: Source of mixing randomness.
        detach: Whether the returned parts are detached from the graph.

    Returns:
        ``(loss, parts)`` with parts ``ce`` and, for ranking losses, ``rank``.

    References:
        Noh et al., ICCV 2023 (arXiv 2308.11990), Sec. 3.
    """
    if cfg.name in ("ce", "ls", "focal"):
        logits = model(x)
        if cfg.name == "ce":
            loss = F.cross_entropy(logits, y)
        elif cfg.name == "ls":
            loss = label_smoothing_loss(logits, y, cfg.smoothing)
        else:
            loss = focal_loss(logits, y, cfg.focal_gamma)
        return loss, {"ce": loss.detach()}

    layer = mix_layer(model, cfg)
    hidden = model.features(x, layer)
    cutmix_hw = tuple(x.shape[-2:]) if cfg.mixing == "cutmix" else None
    plans = sample_plans(x.shape[0], cfg.copies, cfg.alpha, rng, cutmix_hw=cutmix_hw)  # type: ignore[arg-type]
    mixed = torch.cat([apply_plan(hidden, plan) for plan in plans])

    if cfg.name == "mixup":
        logits = model.head_from(mixed, layer)
        loss = mixup_loss(logits, y, y[plans[0].perm], plans[0].lam)
        return loss, {"ce": loss.detach()}

    raw_logits = model.head_from(hidden, layer)
    with running_stats_frozen(model) if cfg.mixed_bn == "freeze" else contextlib.nullcontext():
        mixed_logits = model.head_from(mixed, layer)
    ce = F.cross_entropy(raw_logits, y)
    if cfg.name == "mrl":
        valid = torch.cat([~same_class(y, plan) for plan in plans])
        rank = mrl_loss(raw_logits, mixed_logits, valid, cfg.margin, cfg.mrl_mask)
    else:
        rank = mndcg_loss(raw_logits, mixed_logits, relevance(y, plans).to(x.device))
    parts = {"ce": ce, "rank": rank}
    return ce + cfg.weight * rank, {k: v.detach() for k, v in parts.items()} if detach else parts


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave every BatchNorm layer's running statistics unchanged.

    Train-mode BatchNorm still normalises with the batch's own statistics (and its backward is
    the same), so only the buffers evaluation uses are spared: not updated, and
    ``num_batches_tracked`` not counted. Torch's ``_BatchNorm`` (and ``SyncBatchNorm``,
    :class:`pipeline.distributed.AllReduceBatchNorm2d`) skips the update while
    ``track_running_stats`` is off; momentum 0 would not do, as ``0 * inf`` from a diverging
    batch is NaN.
    """
    layers = tracking_batchnorms(model)
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True
