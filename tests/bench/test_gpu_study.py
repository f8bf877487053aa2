"""bench/gpu_study.py: a study's rows run by worker processes into row files, as a CPU dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from bench import gpu_study as script
from pipeline.training import device_name
from tests.conftest import ROOT, SYSTEM_FASHION_MNIST, needs_fashion_mnist


def small_preset(tmp_path: Path) -> Path:
    """The paper preset with a network and evaluation small enough for a test."""
    params = yaml.safe_load((ROOT / "presets" / "study_paper.yaml").read_text())
    params["model"]["arch"] = "small_cnn"
    params["data"]["image_size"] = [28, 28]
    params["evaluate"].update(corruptions=["contrast"], severities=[1], shift_images=50)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def flags(tmp_path: Path, *names: str) -> list[str]:
    return [
        *("--params", str(small_preset(tmp_path)), "--device", "cpu", "--jobs", "2"),
        *("--epochs", "1", "--max-train", "200", "--max-test", "200", "--seeds", "0"),
        *("--fashion-mnist", str(SYSTEM_FASHION_MNIST), "--out", str(tmp_path / "out")),
        *("--names", *names),
    ]


@needs_fashion_mnist
def test_rows_are_written_once_and_a_second_call_skips_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert script.main(flags(tmp_path, "ce", "mrl")) == 0
    rows = tmp_path / "out" / "rows"
    written = {p.name: json.loads(p.read_text()) for p in rows.glob("*.json")}
    assert set(written) == {"ce-s0.json", "mrl-s0.json"}
    mrl = written["mrl-s0.json"]
    assert (mrl["loss"], mrl["seed"]) == ("mrl", 0) and 0 < mrl["accuracy"] <= 100
    assert mrl["device"] == device_name(torch.device("cpu")) and "rank_grad_share" in mrl
    report = json.loads((tmp_path / "out" / "gpu_study.json").read_text())
    assert set(report["row_seconds"]) == {"ce-s0", "mrl-s0"} and report["failed"] == {}
    assert "2 rows to run" in capsys.readouterr().out
    # A second call (another device session) finds both rows done and leaves their files alone.
    before = {p.name: p.stat().st_mtime_ns for p in rows.glob("*.json")}
    assert script.main(flags(tmp_path, "ce", "mrl")) == 0
    assert "0 rows to run" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in rows.glob("*.json")} == before


@needs_fashion_mnist
def test_an_unknown_row_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert script.main(flags(tmp_path, "ce", "mrl_typo")) == 2
    assert "no study row ['mrl_typo']" in capsys.readouterr().err
    assert not (tmp_path / "out" / "rows").exists()
