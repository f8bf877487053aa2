"""End to end: `dvc repro` of download + train on a tiny params file, in a temporary copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, needs_fashion_mnist

TRACKED = ["dvc.yaml", "pipeline", "stages", "checksums", ".dvcignore"]


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def project(tmp_path: Path, params: dict[str, Any]) -> Path:
    for name in TRACKED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    params["data"].update(max_train=600, max_test=200)
    params["train"].update(epochs=2, batch_size=64, threads=2)
    params["evaluate"].update(
        corruptions=["gaussian_noise", "rotation"], severities=[1, 3], shift_images=100
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], tmp_path)
    return tmp_path


@pytest.mark.slow
@needs_fashion_mnist
def test_dvc_repro_runs_then_reports_nothing_changed(project: Path) -> None:
    run(["dvc", "repro"], project)
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    assert metrics["epochs"] == 2 and 0.1 < metrics["best_val_accuracy"] <= 1.0
    assert (project / "models" / "model.pt").is_file()
    assert (project / "models" / "checkpoints" / "last.pt").is_file()
    assert (project / "dvclive" / "train" / "plots" / "metrics" / "val_ece.tsv").is_file()
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    assert meta["sizes"]["train"] + meta["sizes"]["val"] == 600
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    assert {"raw", "scaled"} == set(evaluation["test"])
    assert set(evaluation["ood"]) == {"digits", "noise"}
    assert set(evaluation["shift"]) == {"clean", "gaussian_noise", "rotation"}
    serving = json.loads((project / "models" / "calibration.json").read_text())
    assert serving["class_names"][0] == "T-shirt/top" and serving["temperature"] > 0

    again = run(["dvc", "repro"], project)
    assert "Data and pipelines are up to date" in again
    shown = run(["dvc", "metrics", "show", "--json"], project)
    assert "best_val_accuracy" in shown and "adaptive_ece" in shown
    rendered = run(["dvc", "plots", "show", "-o", str(project / "rendered")], project)
    assert (project / "rendered" / "index.html").is_file(), rendered
    html = (project / "rendered" / "index.html").read_text()
    assert "Reliability diagram" in html and "reliability.png" in html
    status = run(["dvc", "status"], project)
    assert "up to date" in status

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "train.epochs" in run(["dvc", "params", "diff"], project)
    changed = run(["dvc", "status"], project)
    assert "train" in changed and "download" not in changed.split("train")[0]
