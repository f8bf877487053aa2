"""bench/ddp_scaling.py on toy data: one row per process count, from real stage runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.data import save_prepared
from tests.conftest import ROOT, synthetic_prepared


@pytest.mark.slow
def test_rows_for_one_and_two_processes(tmp_path: Path, params: dict[str, Any]) -> None:
    save_prepared(synthetic_prepared(n=300), tmp_path / "data")
    params["train"].update(batch_size=32, augment="none")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "ddp_scaling.py")),
            *("--params", str(tmp_path / "params.yaml"), "--data", str(tmp_path / "data")),
            *("--procs", "1", "2", "--cores", "2", "--json", str(tmp_path / "rows.json")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [row["processes"] for row in rows] == [1, 2]
    for row in rows:
        # 240 training images in one epoch, at the seconds the stage itself reported
        assert row["images_per_s"] == pytest.approx(240 / row["seconds"])
        assert 0 <= row["val_accuracy"] <= 100
    assert "| 2 | 1 |" in done.stdout  # two processes, one thread each
