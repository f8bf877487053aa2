"""The feature-space drift study's parts (bench/feature_drift.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import feature_drift
from pipeline.models import build_model
from pipeline.preprocessing import to_model_input


def test_features_are_the_last_linear_layers_input_and_logits_the_models() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3, in_channels=1).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    feats, logits = feature_drift.features_and_logits(model, images, [0.3], [0.3])
    head = feature_drift.last_linear(model)
    assert feats.shape == (5, head.in_features)
    x = torch.from_numpy(to_model_input(images, [0.3], [0.3]))
    with torch.no_grad():
        expected = model(x).double().numpy()
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
        by_head = head(torch.from_numpy(feats).float()).double().numpy()
    np.testing.assert_allclose(by_head, expected, rtol=1e-4, atol=1e-5)


def test_norm_psi_is_zero_on_the_reference_and_large_when_norms_move() -> None:
    norms = np.random.default_rng(1).gamma(4.0, size=10_000)
    edges = np.quantile(norms, feature_drift.DECILES)
    edges[0], edges[-1] = -np.inf, np.inf
    reference = np.full(10, 1000.0)
    assert feature_drift.norm_psi(norms, edges, reference) == pytest.approx(0.0, abs=1e-9)
    assert feature_drift.norm_psi(norms * 3, edges, reference) > 1.0
