"""Batched inference on uint8 images, through the preprocessing serving uses.

Training's validation pass and the evaluate stage both call :func:`predict_logits` (or
:func:`predict_outputs`, which adds the feature norms), so the model is always fed exactly what
:func:`pipeline.preprocessing.to_model_input` produces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from pipeline.preprocessing import to_model_input


def predict_logits(
    model: nn.Module, images: np.ndarray, mean: list[float], std: list[float], batch_size: int
) -> np.ndarray:
    """Logits of uint8 NHWC ``images`` (eval mode, CPU or the model's device), float64."""
    return predict_outputs(model, images, mean, std, batch_size)[0]


def predict_outputs(
    model: nn.Module,
    images: np.ndarray,
    mean: list[float],
    std: list[float],
    batch_size: int,
    feature_layer: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits of uint8 NHWC ``images`` and, with ``feature_layer``, the L2 norm of its input.

    Args:
        model: The classifier (eval mode is set; it runs on its own device).
        images: uint8 (N, H, W, C), may be memory-mapped: read batch by batch.
        mean: Per-channel normalisation mean ([0, 1] scale).
        std: Per-channel normalisation standard deviation.
        batch_size: Images per forward pass.
        feature_layer: A module of ``model`` (:func:`final_linear`) whose input's norm is wanted.

    Returns:
        float64 logits (N, K) and float64 norms (N,), or ``None`` without ``feature_layer``.
    """
    model.eval()
    device = next(model.parameters()).device
    outs, norms = [], []
    with torch.no_grad(), _norms_of_input(feature_layer, norms):
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(to_model_input(images[start : start + batch_size], mean, std))
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            outs.append(model(x).float().cpu())
    if not outs:
        return np.zeros((0, 0)), (np.zeros(0) if feature_layer is not None else None)
    logits = torch.cat(outs).double().numpy()
    if feature_layer is None:
        return logits, None
    if len(norms) != len(outs):
        raise RuntimeError(f"the feature layer ran {len(norms)} times in {len(outs)} batches")
    return logits, torch.cat(norms).double().numpy()


def logits_from_input(model: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """float64 logits of already-preprocessed float32 input ``x`` (N, C, H, W), e.g. mixed
    images (eval mode, the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            batch = batch.to(device).contiguous(memory_format=torch.channels_last)
            outs.append(model(batch).float().cpu())
    return torch.cat(outs).double().numpy() if outs else np.zeros((0, 0))


def feature_norm(features: torch.Tensor) -> torch.Tensor:
    """L2 norm of each item's features (all dimensions after the first), in float32."""
    return torch.linalg.vector_norm(features.float().flatten(1), dim=1)


@contextlib.contextmanager
def _norms_of_input(layer: nn.Module | None, sink: list[torch.Tensor]) -> Iterator[None]:
    if layer is None:
        yield
        return
    handle = layer.register_forward_hook(
        lambda _m, inputs, _out: sink.append(feature_norm(inputs[0]).cpu())
    )
    try:
        yield
    finally:
        handle.remove()


def final_linear(model: nn.Module, sample: torch.Tensor) -> nn.Linear | None:
    """The linear layer whose output is the model's output (its input: the penultimate features).

    Found by running a seeded random batch shaped like ``sample`` (random, so that a head that
    scales or shifts the layer's output cannot match it by chance, as all-zero outputs would)
    and taking the last ``nn.Linear`` called, if what it returned is exactly what the model
    returned; ``None`` when the logits come from something else (a convolutional head, a
    scaling after the layer), where the feature norm is not defined.
    """
    probe = torch.randn(sample.shape, generator=torch.Generator().manual_seed(0))
    probe = probe.to(sample.device, sample.dtype)
    calls: list[tuple[nn.Linear, torch.Tensor]] = []
    handles = [
        m.register_forward_hook(lambda m, _i, out: calls.append((m, out)))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    model.eval()
    try:
        with torch.no_grad():
            logits = model(probe)
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        return None
    layer, out = calls[-1]
    if out.shape != logits.shape or not torch.equal(out, logits):
        return None
    return layer
