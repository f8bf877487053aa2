"""bench/val_size.py: temperature fits on validation subsets of several sizes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.data import save_prepared
from pipeline.training import train
from tests.conftest import ROOT, configs, synthetic_prepared

SCRIPT = ROOT / "bench" / "val_size.py"


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("val_size", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_calibrated_logits_keep_t_near_1_and_bigger_subsets_fit_it_more_steadily() -> None:
    """Labels drawn from the softmax of the logits: the true temperature is 1."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(8000, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in probs])
    figures = load_script().held_out_eces(logits, labels, [100, 2000], draws=8, seed=1)
    small, large = figures[100], figures[2000]
    assert np.abs(large["t"] - 1).max() < 0.1
    assert large["t"].std() < small["t"].std()
    assert small["ece"].shape == (8,) and np.all(small["unscaled"] == small["unscaled"][0])


@pytest.mark.slow
def test_the_script_reads_study_models_and_prints_one_row_per_size(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    data = synthetic_prepared(n=600)
    save_prepared(data, tmp_path / "data")
    model_cfg, loss_cfg, cfg = configs(
        params, train={"epochs": 1, "batch_size": 32, "threads": 1, "augment": "none"}
    )
    train(data, model_cfg, loss_cfg, cfg, tmp_path / "runs" / "ce-s0")
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--runs", str(tmp_path / "runs")),
            *("--data", str(tmp_path / "data"), "--sizes", "20", "100", "--draws", "3"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 20 |" in done.stdout and "| 100 |" in done.stdout
    assert "1 models x 3 draws per size" in done.stdout
