"""A torchvision and a timm backbone through one training step, a checkpoint and the ONNX export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

from pipeline.checkpoint import load_model, save_checkpoint
from pipeline.export import PROB_ATOL, CalibratedNet, export_onnx, verify_export
from pipeline.metrics.calibration import expected_calibration_error
from pipeline.model_card import ModelCard, ReferenceConfidence
from pipeline.models import MixableNet, build_model, param_groups
from pipeline.objective import compute_loss
from pipeline.preprocessing import to_model_input
from tests.conftest import configs
from tests.serving.conftest import quadrant_images

SIZE, CLASSES = 32, 4
MEAN, STD = [0.3], [0.3]
BACKBONES = ["tv:resnet18", "timm:mobilenetv3_small_050"]


pytestmark = pytest.mark.usefixtures("no_network")


def make_card() -> ModelCard:
    edges = [0.0, 0.5, 1.0]
    return ModelCard(
        dataset="quadrants",
        class_names=[f"q{k}" for k in range(CLASSES)],
        image_shape=[SIZE, SIZE, 1],
        resize="resize_shorter_then_center_crop",
        mean=MEAN,
        std=STD,
        temperature=1.5,
        ood_threshold=0.6,
        ood_tpr=0.95,
        reference_confidence=ReferenceConfidence(bin_edges=edges, counts=[1, 1], mean=0.5),
        test_accuracy=50.0,
        test_ece=5.0,
        model_version="test-backbone",
    )


def train_one_step(model: MixableNet, params: dict[str, Any]) -> MixableNet:
    """One SGD step of CE + M-NDCG with Manifold Mixup at the model's default layer."""
    _, loss_cfg, _ = configs(params, loss={"name": "mndcg", "mixing": "manifold"})
    images, labels = quadrant_images(16, size=SIZE)
    x, y = torch.from_numpy(to_model_input(images, MEAN, STD)), torch.from_numpy(labels)
    optimizer = torch.optim.SGD(param_groups(model, lr=0.01, backbone_lr_scale=0.1), lr=0.01)
    head_before = model.head.weight.detach().clone()
    loss, parts = compute_loss(model.train(), x, y, loss_cfg, np.random.default_rng(0))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and parts["rank"] > 0
    assert not torch.equal(model.head.weight, head_before)
    return model.eval()


@pytest.mark.parametrize("arch", BACKBONES)
def test_trained_backbone_exports_and_passes_verification(
    arch: str, params: dict[str, Any], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = train_one_step(build_model(arch, num_classes=CLASSES, in_channels=1), params)
    card, path = make_card(), tmp_path / "model.onnx"
    export_onnx(model, card, path)
    images, labels = quadrant_images(16, size=SIZE)
    with torch.no_grad():
        x = torch.from_numpy(to_model_input(images, MEAN, STD))
        probs = CalibratedNet(model, card.temperature).eval()(x)[1].numpy()
    ece = 100.0 * expected_calibration_error(probs, labels, 15)  # percent, as verify expects
    figures = verify_export(path, model, images, labels, card, ece, 15, 8)
    assert figures["max_abs_prob_diff"] <= PROB_ATOL and figures["argmax_agreement"] == 1.0
    assert figures["batch_sizes"] == [1, 64] and figures["ece_abs_diff"] <= 1e-4


def test_checkpoint_of_a_pretrained_backbone_loads_without_download(tmp_path: Path) -> None:
    # Pretrained weights from a local file; afterwards the cache is emptied and downloads
    # fail, so load_model can only succeed if it rebuilds without fetching weights.
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    model = build_model("tv:resnet18", num_classes=CLASSES, in_channels=1, pretrained=True)
    meta = {"arch": "tv:resnet18", "num_classes": CLASSES, "image_shape": [SIZE, SIZE, 1]}
    save_checkpoint(tmp_path / "best.pt", model, meta=meta, epoch=1)
    cached.unlink()
    loaded, loaded_meta = load_model(tmp_path / "best.pt")
    assert loaded_meta == meta and loaded.arch == "tv:resnet18" and not loaded.training
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
