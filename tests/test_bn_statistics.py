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

from pipeline.bn_statistics import Mixing, has_batchnorm, recompute_bn, tracking_batchnorms
from pipeline.checkpoint import load_model
from pipeline.data.mixup import sample_plans
from pipeline.models import build_model
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


def test_cutmix_copies_move_pixels_so_binary_images_keep_their_statistics() -> None:
    """Two 4x4 images, all 0 and all 1: 16 zeros and 16 ones, mean 0.5, unbiased variance
    32 * 0.25 / 31 = 8/31. Seed 3's CutMix copy swaps the pair and pastes a 2-pixel box
    (kept area 0.875): still 16 zeros and 16 ones, so the running variance stays 8/31. Blended
    (input mixup, the same seed's lambda 0.7236) the copy's values are 0.2764 and 0.7236,
    variance 32 * 0.2236^2 / 31 = 1.6/31, and the average is 4.8/31."""
    model = nn.Sequential(nn.BatchNorm2d(1))
    images = np.repeat(np.array([0, 255], dtype=np.uint8), 16).reshape(2, 4, 4, 1)
    (plan,) = sample_plans(2, 1, 2.0, np.random.default_rng(3), cutmix_hw=(4, 4))
    assert plan.perm.tolist() == [1, 0] and plan.lam == 0.875  # a real swap of 2 pixels
    cut = recompute_bn(
        model, images, [0.0], [1.0], batch_size=2, mixing=Mixing(2.0, 1, seed=3, cutmix=True)
    )
    blend = recompute_bn(model, images, [0.0], [1.0], batch_size=2, mixing=Mixing(2.0, 1, seed=3))
    assert cut[0].running_mean.item() == pytest.approx(0.5, abs=1e-6)
    assert cut[0].running_var.item() == pytest.approx(8 / 31, abs=1e-6)
    assert blend[0].running_var.item() == pytest.approx(4.8 / 31, abs=1e-4)


def test_manifold_copies_leave_the_layers_before_the_mixing_layer_to_the_raw_images() -> None:
    """Mixed at small_cnn's layer 2, the BatchNorm layers of blocks 1 and 2 see only the raw
    batches (their statistics are the raw recompute's, exactly), block 3's also the copies."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3, in_channels=1)
    images = np.random.default_rng(0).integers(0, 256, size=(64, 12, 12, 1), dtype=np.uint8)
    raw = recompute_bn(model, images, [0.5], [0.25], batch_size=32)
    mixing = Mixing(2.0, 3, seed=1, layer=2)
    hidden = recompute_bn(model, images, [0.5], [0.25], batch_size=32, mixing=mixing)
    at_input = recompute_bn(
        model, images, [0.5], [0.25], batch_size=32, mixing=dataclasses.replace(mixing, layer=0)
    )
    for block, same in ((0, True), (1, True), (2, False)):
        for layer in tracking_batchnorms(raw.segments[block]):
            name = next(n for n, m in raw.named_modules() if m is layer)
            got = hidden.get_submodule(name).running_var
            assert torch.equal(got, layer.running_var) == same, name
            # mixed at the input, every layer's statistics move
            assert not torch.equal(at_input.get_submodule(name).running_var, layer.running_var)


def test_a_mixing_layer_the_network_lacks_fails_before_training(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    data = synthetic_prepared(n=64)
    model_cfg, loss_cfg, cfg = configs(
        params,
        loss={"name": "ce", "mixing": "manifold", "manifold_layer": 9},
        train={"epochs": 1, "batch_size": 32, "threads": 1, "bn_statistics": "mixed"},
    )
    with pytest.raises(ValueError, match=r"loss\.manifold_layer must be in"):
        train(data, model_cfg, loss_cfg, cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


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


@pytest.mark.parametrize(
    ("stats", "mixing"),
    [("raw", "mixup"), ("mixed", "mixup"), ("mixed", "cutmix"), ("mixed", "manifold")],
)
def test_training_gives_the_chosen_model_recomputed_statistics_and_the_same_weights(
    tmp_path: Path, params: dict[str, Any], stats: str, mixing: str
) -> None:
    data = synthetic_prepared(n=200)
    fast = {"epochs": 2, "batch_size": 32, "threads": 1, "augment": "none"}
    model_cfg, loss_cfg, cfg = configs(params, loss={"name": "ce", "mixing": mixing}, train=fast)
    train(data, model_cfg, loss_cfg, cfg, tmp_path / "trained")
    train(
        data, model_cfg, loss_cfg, dataclasses.replace(cfg, bn_statistics=stats), tmp_path / stats
    )
    kept, _ = load_model(tmp_path / "trained" / "best.pt")
    got, _ = load_model(tmp_path / stats / "best.pt")
    # as loss.mixing says: blends or boxes of the input, or blends at small_cnn's layer 2
    mixed = Mixing(
        loss_cfg.alpha,
        loss_cfg.num_mixes,
        seed=cfg.seed,
        layer=2 if mixing == "manifold" else 0,
        cutmix=mixing == "cutmix",
    )
    want = recompute_bn(
        kept,
        data.train.images,
        data.mean,
        data.std,
        32,
        indices=data.train_idx,
        mixing=mixed if stats == "mixed" else None,
    )
    # CE's steps never read the running statistics: the weights are the same
    for name, param in kept.named_parameters():
        assert torch.equal(param, got.get_parameter(name)), name
    running = [k for k in kept.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert running
    for key in running:
        torch.testing.assert_close(got.state_dict()[key], want.state_dict()[key])
    assert any(not torch.equal(got.state_dict()[k], kept.state_dict()[k]) for k in running)
