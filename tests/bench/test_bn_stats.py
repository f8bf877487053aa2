"""bench/bn_stats.py: BatchNorm statistics recomputed from raw images, and the before/after
figures of a trained model."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench import bn_stats as script
from pipeline.training import train
from tests.conftest import configs, synthetic_prepared


def test_rows_are_pooled_over_seeds_with_a_paired_interval_of_the_change() -> None:
    """ECE 4 -> 2 and 6 -> 3 over two seeds: change -2.5, differences' sd 0.707, standard
    error 0.5, t(0.975, 1 df) = 12.706: -2.5 -/+ 6.353. One seed: no interval."""
    base = {"accuracy": 90.0, "accuracy_raw_bn": 90.0, "temperature": 1.0}
    base |= {"temperature_raw_bn": 1.0, "ece_ts": 1.0, "ece_ts_raw_bn": 1.0}
    rows = [
        {"run": "mrl-s0", **base, "ece": 4.0, "ece_raw_bn": 2.0},
        {"run": "mrl-s1", **base, "ece": 6.0, "ece_raw_bn": 3.0},
        {"run": "ce-s0", **base, "ece": 3.0, "ece_raw_bn": 2.5},
    ]
    mrl, ce = script.summarise(rows)
    assert (mrl["row"], mrl["seeds"], ce["row"], ce["seeds"]) == ("mrl", 2, "ce", 1)
    assert (mrl["ece"], mrl["ece_raw_bn"], mrl["ece_change"]) == (5.0, 2.5, -2.5)
    assert mrl["ece_change_low"] == pytest.approx(-8.853, abs=1e-3)
    assert mrl["ece_change_high"] == pytest.approx(3.853, abs=1e-3)
    assert ce["ece_change"] == -0.5 and np.isnan(ce["ece_change_low"])


@pytest.mark.slow
def test_a_trained_model_is_compared_before_and_after(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    data = synthetic_prepared(n=400)
    model_cfg, loss_cfg, cfg = configs(
        params,
        loss={"name": "mndcg", "num_mixes": 2},
        train={"epochs": 2, "batch_size": 32, "threads": 1, "augment": "none"},
    )
    run = tmp_path / "mndcg-s0"
    train(data, model_cfg, loss_cfg, cfg, run)
    compared = script.compare(run, data, batch_size=100)
    assert compared is not None
    row, fresh = compared
    assert row["run"] == "mndcg-s0"
    model, _ = script.load_model(run / "best.pt")
    assert {k: row[k] for k in script.COLUMNS} == script.calibration_figures(model, data, 100)
    for key in script.COLUMNS:
        assert np.isfinite(row[f"{key}_raw_bn"])
    # the statistics changed (two passes per step: raw and mixed), the weights did not
    assert row["ece_raw_bn"] != row["ece"] or row["accuracy_raw_bn"] != row["accuracy"]
    assert script.calibration_figures(fresh, data, 100)["ece"] == row["ece_raw_bn"]
    for name, param in model.named_parameters():
        assert torch.equal(param, fresh.get_parameter(name)), name


@pytest.mark.slow
def test_the_script_reads_finished_study_runs_only(
    tmp_path: Path, params: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A row the study stage finished is measured; a run without its row file (still
    training) is left out."""
    import shutil

    import yaml

    from stages import study
    from tests.conftest import ROOT
    from tests.data.conftest import write_raw_dataset

    write_raw_dataset("mnist", tmp_path / "raw", n_train=90, n_test=40)
    params["data"].update(dataset="mnist", ood=["noise"], max_train=None)
    params["train"].update(batch_size=32, threads=1)
    params["evaluate"].update(corruptions=["contrast"], severities=[1], shift_images=20)
    params["study"].update(max_train=80, epochs=1, seeds=[0], losses=["mrl"])
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    source = ["--raw", str(tmp_path / "raw")]
    source += ["--checksums", str(ROOT / "checksums" / "fashion-mnist.sha256")]
    runs, rows = tmp_path / "runs", tmp_path / "rows"
    stage = ["run", "mrl", "--seed", "0", "--params", str(tmp_path / "p.yaml"), *source]
    assert study.main([*stage, "--rows", str(rows), "--work", str(runs)]) == 0
    shutil.copytree(runs / "mrl-s0", runs / "mrl-s1")  # no rows/mrl-s1.json: unfinished
    capsys.readouterr()
    out_csv = tmp_path / "bn.csv"
    argv = ["--params", str(tmp_path / "p.yaml"), "--runs", str(runs), "--csv", str(out_csv)]
    assert script.main([*argv, *source]) == 0
    printed = capsys.readouterr().out
    assert "| mrl-s0 |" in printed and "mrl-s1" not in printed
    with out_csv.open() as f:
        (row,) = list(csv.DictReader(f))
    written = json.loads((rows / "mrl-s0.json").read_text())
    # "before" is what the study measured on the same model and test set
    assert float(row["accuracy"]) == pytest.approx(written["accuracy"], abs=1e-9)
