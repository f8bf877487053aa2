"""Shared fixtures: tiny synthetic prepared data and the shipped params as typed config."""

from __future__ import annotations

import copy
import os
import shutil
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import load_section, read_params
from pipeline.data import ImageSet, PreparedData

ROOT = Path(__file__).parents[1]
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# The paper's RankMixup settings as a ``study.paper`` section (params.yaml's).
PAPER_SETTINGS = {
    "weight": 0.1,
    "margin": 2.0,
    "alpha": 2.0,
    "num_mixes": 3,
    "mrl_mask": "faithful",
    "mixed_bn": "update",
}
needs_fashion_mnist = pytest.mark.skipif(
    not SYSTEM_FASHION_MNIST.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (make test installs it as root)",
)


def synthetic_prepared(
    n: int = 400, classes: int = 4, size: int = 12, seed: int = 0
) -> PreparedData:
    """A learnable toy dataset: each class lights up its own quadrant, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, size=(n, size, size, 1), dtype=np.uint8)
    half = size // 2
    for k in range(classes):
        r, c = divmod(k, 2)
        images[labels == k, r * half : (r + 1) * half, c * half : (c + 1) * half] += 150
    pool = ImageSet(images, labels.astype(np.int64))
    idx = np.arange(n)
    return PreparedData(
        dataset="synthetic",
        class_names=[f"class_{k}" for k in range(classes)],
        train=pool,
        test=pool,
        train_idx=idx[idx % 5 != 0],
        val_idx=idx[idx % 5 == 0],
        mean=[0.3],
        std=[0.3],
        ood={},
        resize="resize_shorter_then_center_crop",
    )


def require_hey() -> None:
    """Skip a test that needs the ``hey`` load generator where it is missing; in CI, where
    ``make setup`` installs it, its absence is a failure, not a skip."""
    if shutil.which("hey") is None:
        message = "hey is not installed (make setup installs Debian's package as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pretrained weights offline: empty temporary caches (``tmp_path/torch`` for torch.hub,
    ``tmp_path/hf`` for the Hugging Face Hub), torch.hub downloads that fail, an offline Hub."""
    import huggingface_hub.constants
    import torch

    def refuse(url: str, *args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError(f"network disabled in tests ({url})")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


@pytest.fixture
def params() -> dict[str, Any]:
    """A fresh, mutable copy of the shipped params.yaml."""
    return copy.deepcopy(read_params(ROOT / "params.yaml"))


def data_config(params: dict[str, Any], **overrides: Any) -> Any:
    """The typed ``data`` section of ``params`` with ``overrides`` applied."""
    return load_section({"data": {**params["data"], **overrides}}, "data")


def configs(params: dict[str, Any], **overrides: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Typed ``model``, ``loss``, ``train`` sections with per-section overrides applied."""
    for section, values in overrides.items():
        params[section].update(values)
    return tuple(load_section(params, s) for s in ("model", "loss", "train"))  # type: ignore[return-value]
