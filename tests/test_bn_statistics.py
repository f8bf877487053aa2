"""BatchNorm running statistics recomputed from raw, or raw and mixed, images: by hand, and
through training (``train.bn_statistics``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.bn_statistics import Mixing, has_batchnorm, recompute_bn
from pipeline.checkpoint import load_model
from pipeline.data.mixup import sample_plans
from pipeline.training import train
from tests.conftest import configs, synthetic_prepared


def test_running_statistics_are_the_average_of_the_batches_and_the_model_is_left_alone() -> None:
    """Batches [0, 1] and [0.2, 0.6] (pixels 0, 255, 51, 153 with mean 0, std 1): running
    mean (0.5 + 0.4) / 2 = 0.45, running variance (unbiased) (0.5 + 0.08) / 2 = 0.29."""
    model = nn.Sequential(nn.BatchNorm2d(1))
    images = np.array([0, 255, 51, 153], dtype=np.uint8).reshape(4, 1, 1, 1)
    fresh = recompute_bn(model, images, [0.0], [1.0], batch_size=2)
    bn = fresh[0]
    assert bn.running_mean.item() == pytest.approx(0.45, abs=1e-6)
    assert bn.running_var.item() == pytest.approx(0.29, abs=1e-6)
    assert not fresh.training
    # the trained model keeps its own statistics
    assert model[0].running_mean.item() == 0.0 and model[0].running_var.item() == 1.0


def test_mixed_statistics_weigh_the_raw_and_the_mixed_batch_alike() -> None:
    """Pixels 0 and 255 (x = 0 and 1, mean 0, std 1) and one mixed copy: the raw batch has
    mean 0.5 and unbiased variance 0.5. The copy is lam * x + (1 - lam) * x[perm]: swapped,
    [lam, 1 - lam], mean 0.5 and variance (2 lam - 1)^2 / 2; not swapped, x itself. The
    running statistics average the two batches."""
    model = nn.Sequential(nn.BatchNorm2d(1))
    images = np.array([0, 255], dtype=np.uint8).reshape(2, 1, 1, 1)
    mixing = Mixing(alpha=2.0, copies=1, seed=3)
    fresh = recompute_bn(model, images, [0.0], [1.0], batch_size=2, mixing=mixing)
    (plan,) = sample_plans(2, 1, 2.0, np.random.default_rng(3))  # the draw the script makes
    assert plan.perm.tolist() == [1, 0]  # seed 3 swaps the pair (lam = 0.7236)
    mixed_var = (2 * plan.lam - 1) ** 2 / 2  # 0.4472^2 / 2 = 0.1000
    assert fresh[0].running_mean.item() == pytest.approx(0.5, abs=1e-6)
    assert fresh[0].running_var.item() == pytest.approx((0.5 + mixed_var) / 2, abs=1e-6)
    assert fresh[0].running_var.item() == pytest.approx(0.3, abs=1e-4)  # raw alone: 0.5


def test_statistics_spoilt_by_other_inputs_are_restored_exactly() -> None:
    """A network normalised with the statistics of other (here: blended) inputs gives other
    logits; recomputing from the raw images gives back the raw-statistics network's logits."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(64, 6, 6, 1), dtype=np.uint8)
    blended = (0.5 * raw + 0.5 * raw[::-1]).astype(np.uint8)  # less contrast, as mixup makes
    reference = recompute_bn(model, raw, [0.5], [0.25], batch_size=64)
    spoilt = recompute_bn(model, blended, [0.5], [0.25], batch_size=64)
    restored = recompute_bn(spoilt, raw, [0.5], [0.25], batch_size=64)
    x = torch.from_numpy(raw.transpose(0, 3, 1, 2).astype(np.float32) / 255 - 0.5) / 0.25
    with torch.no_grad():
        want, bad, got = (m(x) for m in (reference, spoilt, restored))
    assert (bad - want).abs().max() > 0.1
    torch.testing.assert_close(got, want)


def test_models_without_running_statistics_are_told_apart() -> None:
    assert not has_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2)))
    assert not has_batchnorm(nn.Sequential(nn.BatchNorm2d(2, track_running_stats=False)))
    assert has_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))


def test_a_last_batch_of_one_image_is_left_out_as_training_leaves_it_out() -> None:
    """Pixels 0, 255 and 51 in batches of 2: the last batch [0.2] alone is dropped, so the
    statistics are the first batch's: mean 0.5, unbiased variance 0.5."""
    model = nn.Sequential(nn.BatchNorm2d(1))
    images = np.array([0, 255, 51], dtype=np.uint8).reshape(3, 1, 1, 1)
    fresh = recompute_bn(model, images, [0.0], [1.0], batch_size=2, indices=np.array([1, 0, 2]))
    assert fresh[0].running_mean.item() == pytest.approx(0.5, abs=1e-6)
    assert fresh[0].running_var.item() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("stats", ["raw", "mixed"])
def test_training_gives_the_chosen_model_recomputed_statistics_and_the_same_weights(
    tmp_path: Path, params: dict[str, Any], stats: str
) -> None:
    data = synthetic_prepared(n=200)
    fast = {"epochs": 2, "batch_size": 32, "threads": 1, "augment": "none"}
    model_cfg, loss_cfg, cfg = configs(params, loss={"name": "ce"}, train=fast)
    train(data, model_cfg, loss_cfg, cfg, tmp_path / "trained")
    train(
        data, model_cfg, loss_cfg, dataclasses.replace(cfg, bn_statistics=stats), tmp_path / stats
    )
    kept, _ = load_model(tmp_path / "trained" / "best.pt")
    got, _ = load_model(tmp_path / stats / "best.pt")
    mixing = Mixing(loss_cfg.alpha, loss_cfg.num_mixes, seed=cfg.seed) if stats == "mixed" else None
    want = recompute_bn(
        kept, data.train.images, data.mean, data.std, 32, indices=data.train_idx, mixing=mixing
    )
    # CE's steps never read the running statistics: the weights are the same
    for name, param in kept.named_parameters():
        assert torch.equal(param, got.get_parameter(name)), name
    running = [k for k in kept.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert running
    for key in running:
        torch.testing.assert_close(got.state_dict()[key], want.state_dict()[key])
    assert any(not torch.equal(got.state_dict()[k], kept.state_dict()[k]) for k in running)
