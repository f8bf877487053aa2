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
from torch import nn

from bench import bn_stats as script
from pipeline.data.mixup import sample_plans
from pipeline.training import train
from tests.conftest import configs, synthetic_prepared


def test_running_statistics_are_the_average_of_the_batches_and_the_model_is_left_alone() -> None:
    """Batches [0, 1] and [0.2, 0.6] (pixels 0, 255, 51, 153 with mean 0, std 1): running
    mean (0.5 + 0.4) / 2 = 0.45, running variance (unbiased) (0.5 + 0.08) / 2 = 0.29."""
    model = nn.Sequential(nn.BatchNorm2d(1))
    images = np.array([0, 255, 51, 153], dtype=np.uint8).reshape(4, 1, 1, 1)
    fresh = script.recompute_bn(model, images, [0.0], [1.0], batch_size=2)
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
    mixing = script.Mixing(alpha=2.0, copies=1, seed=3)
    fresh = script.recompute_bn(model, images, [0.0], [1.0], batch_size=2, mixing=mixing)
    (plan,) = sample_plans(2, 1, 2.0, np.random.default_rng(3))  # the draw the script makes
    assert plan.perm.tolist() == [1, 0]  # seed 3 swaps the pair (lam = 0.7236)
    mixed_var = (2 * plan.lam - 1) ** 2 / 2  # 0.4472^2 / 2 = 0.1000
    assert fresh[0].running_mean.item() == pytest.approx(0.5, abs=1e-6)
    assert fresh[0].running_var.item() == pytest.approx((0.5 + mixed_var) / 2, abs=1e-6)
    assert fresh[0].running_var.item() == pytest.approx(0.3, abs=1e-4)  # raw alone: 0.5


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
    reference = script.recompute_bn(model, raw, [0.5], [0.25], batch_size=64)
    spoilt = script.recompute_bn(model, blended, [0.5], [0.25], batch_size=64)
    restored = script.recompute_bn(spoilt, raw, [0.5], [0.25], batch_size=64)
    x = torch.from_numpy(raw.transpose(0, 3, 1, 2).astype(np.float32) / 255 - 0.5) / 0.25
    with torch.no_grad():
        want, bad, got = (m(x) for m in (reference, spoilt, restored))
    assert (bad - want).abs().max() > 0.1
    torch.testing.assert_close(got, want)


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
