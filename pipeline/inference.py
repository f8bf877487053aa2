"""Batched inference on uint8 images, through the preprocessing serving uses.

Training's validation pass and the evaluate stage both call :func:`predict_logits`, so the
model is always fed exactly what :func:`pipeline.preprocessing.to_model_input` produces.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.preprocessing import to_model_input


def predict_logits(
    model: nn.Module, images: np.ndarray, mean: list[float], std: list[float], batch_size: int
) -> np.ndarray:
    """Logits of uint8 NHWC ``images`` (eval mode, CPU or the model's device), float64."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(to_model_input(images[start : start + batch_size], mean, std))
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            outs.append(model(x).float().cpu())
    if not outs:
        return np.zeros((0, 0))
    return torch.cat(outs).double().numpy()
