"""The train stage killed with SIGKILL mid-run, then rerun: it resumes and ends with the weights
an uninterrupted run gives; the checkpoint it left is whole (written atomically)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipeline.checkpoint import load_checkpoint
from pipeline.data import save_prepared
from tests.conftest import ROOT, synthetic_prepared

EPOCHS = 6


def train_argv(params: Path, data: Path, out: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "stages.train", "--params", str(params), "--data", str(data)),
        *("--checkpoints", str(out / "checkpoints"), "--model", str(out / "model.pt")),
        *("--metrics", str(out / "train.json"), "--live", str(out / "live")),
    ]


def run_to_end(argv: list[str]) -> None:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_gives_the_uninterrupted_weights(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    save_prepared(synthetic_prepared(n=600), tmp_path / "data")
    params["train"].update(epochs=EPOCHS, batch_size=16, threads=1, augment="none")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    run_to_end(train_argv(params_file, tmp_path / "data", tmp_path / "straight"))

    killed = tmp_path / "killed"
    argv = train_argv(params_file, tmp_path / "data", killed)
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():  # the first epoch is saved: kill during the second
        assert process.poll() is None, (
            process.stderr.read().decode()[-3000:] if process.stderr else ""
        )
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    # Whatever moment the kill hit, the checkpoint on disk is a whole one (old or new).
    epoch_at_kill = load_checkpoint(last)["epoch"]
    assert 1 <= epoch_at_kill < EPOCHS
    assert not (killed / "model.pt").exists()

    run_to_end(argv)
    resumed = load_checkpoint(last)
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == EPOCHS
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
    assert straight["extra"]["history"] == resumed["extra"]["history"]
