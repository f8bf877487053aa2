"""Checkpoint files: written atomically, read with ``weights_only=True`` (no pickle code runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.io import atomic_path
from pipeline.models import MixableNet, build_model


def save_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    meta: dict[str, Any],
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write model weights, the metadata needed to rebuild the model, and optionally the
    optimiser/scheduler state for resuming. The file appears only once complete."""
    payload: dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
        "epoch": epoch,
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if extra is not None:
        payload["extra"] = extra
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU without unpickling arbitrary objects."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; run the train stage first")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(path: Path) -> tuple[MixableNet, dict[str, Any]]:
    """Rebuild the model saved in ``path`` in eval mode, with its metadata."""
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    # The weights come from the checkpoint: a pretrained backbone must not download again.
    model = build_model(
        meta["arch"],
        num_classes=meta["num_classes"],
        in_channels=meta["image_shape"][2],
        pretrained=False,
    )
    model.load_state_dict(ckpt["model"])
    return model.eval(), meta
