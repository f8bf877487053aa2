"""bench/train_step.py: one row per objective and precision, bf16 with its speed-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT


def test_rows_for_each_objective_and_precision() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "train_step.py"),
            "--rounds",
            "1",
            "--batch-size",
            "8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [
        (name, precision)
        for precision in ("fp32", "bf16")
        for name in ("ce", "mixup", "mrl", "mndcg")
    ]
    assert rows[0][4] == "1.00"  # fp32 ce is the base
    assert all(len(r) == 6 and float(r[5]) > 0 for r in rows[4:])  # bf16 rows: a speed-up
    assert all(len(r) == 5 for r in rows[:4])


def test_a_folder_preset_times_its_own_network_and_image_size(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "presets" / "photos.yaml").read_text())
    params["data"]["image_size"] = [40, 24]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", str(tmp_path / "p.yaml"), "--rounds", "1", "--batch-size", "4"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_step.py"), *argv, "--precisions", "fp32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("model=timm:efficientnet_lite0 batch=4")
    assert len(done.stdout.splitlines()) == 2 + 4  # header lines, then one row per objective
