"""The loss comparison study on toy data: one row per loss and seed, the committed CSVs'
columns."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from pipeline.checkpoint import load_checkpoint
from pipeline.config import load_section
from pipeline.study import INHERITED_LOSS_KEYS, StudyRun, run_study, study_runs
from pipeline.study_table import plot_shift, write_tables
from pipeline.training import device_name
from tests.conftest import PAPER_SETTINGS, ROOT, configs, synthetic_prepared


def test_study_writes_one_row_per_loss_and_seed(params: dict[str, Any], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = dataclasses.replace(
        synthetic_prepared(),
        ood={"noise": rng.integers(0, 256, size=(30, 12, 12, 1), dtype=np.uint8)},
    )
    model_cfg, loss_cfg, train_cfg = configs(
        params, train={"epochs": 1, "batch_size": 32, "threads": 1, "augment": "none"}
    )
    params["evaluate"].update(corruptions=["contrast"], severities=[1, 3], shift_images=40)
    eval_cfg = load_section(params, "evaluate")
    runs = [StudyRun(n, dataclasses.replace(loss_cfg, name=n)) for n in ("ce", "mndcg")]
    rows = run_study(data, runs, model_cfg, train_cfg, eval_cfg, tmp_path / "work", seeds=(0, 1))
    assert [(r["loss"], r["seed"]) for r in rows] == [
        ("ce", 0),
        ("ce", 1),
        ("mndcg", 0),
        ("mndcg", 1),
    ]
    assert rows[0]["accuracy"] != rows[1]["accuracy"] or rows[0]["ece"] != rows[1]["ece"]
    assert (tmp_path / "work" / "mndcg-s1" / "best.pt").is_file()
    # The selected epoch's validation figures, in percent, as the checkpoint recorded them.
    extra = load_checkpoint(tmp_path / "work" / "mndcg-s1" / "last.pt")["extra"]
    selected = extra["history"][extra["best_epoch"] - 1]
    assert rows[3]["val_accuracy"] == 100 * selected["val_accuracy"]
    assert rows[3]["val_ece"] == 100 * selected["val_ece"]
    assert 0 < rows[3]["val_accuracy"] <= 100 and rows[3]["val_ece"] > 0
    assert rows[3]["device"] == device_name(torch.device("cpu"))
    summaries = write_tables(rows, tmp_path)
    plot_shift(summaries, tmp_path / "shift.png")

    with (tmp_path / "results_seeds.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 4
    with (tmp_path / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [(r["loss"], r["seeds"]) for r in table] == [("ce", "2"), ("mndcg", "2")]
    assert table[0]["d_ece"] == "" and table[1]["d_ece_low"] != ""
    for column in (
        "accuracy",
        "accuracy_std",
        "ece",
        "ece_ci95_low",
        "raw_above_mixed",
        "kendall_tau",
        "adaptive_ece",
        "classwise_ece",
        "nll",
        "brier",
        "ece_ts",
        "auroc_noise",
        "shift_ece_s1",
        "shift_est_err_s3",
        "train_seconds",
    ):
        assert column in table[0], column
    assert float(table[0]["ece"]) == round((rows[0]["ece"] + rows[1]["ece"]) / 2, 3)
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| loss | seeds | accuracy") and len(md) == 6
    assert md[-1] == f"Trained on: {rows[0]['device']}."
    assert (tmp_path / "shift.png").read_bytes()[:4] == b"\x89PNG"


def test_rows_take_ranking_settings_from_the_study_not_the_loss_section(
    params: dict[str, Any],
) -> None:
    # The pipeline's defaults set one way, the study's paper settings and a tuned row another.
    params["loss"].update(
        name="mndcg",
        weight=1.0,
        num_mixes=2,
        margin=0.5,
        alpha=0.4,
        mrl_mask="per_sample",
        mixed_bn="freeze",
    )
    params["loss"].update(mixing="cutmix", smoothing=0.2, focal_gamma=2.0)
    paper = dict(PAPER_SETTINGS)
    tuned = {
        **paper,
        "name": "mrl_tuned",
        "loss": "mrl",
        "weight": 1.5,
        "mrl_mask": "per_sample",
        "mixed_bn": "freeze",
    }
    params["study"].update(losses=["ce", "mixup", "mrl", "mndcg"], paper=paper, tuned=[tuned])
    runs = study_runs(load_section(params, "loss"), load_section(params, "study"))

    assert [(r.name, r.loss.name) for r in runs] == [
        ("ce", "ce"),
        ("mixup", "mixup"),
        ("mrl", "mrl"),
        ("mndcg", "mndcg"),
        ("mrl_tuned", "mrl"),
    ]
    by_name = {r.name: r.loss for r in runs}
    for name in ("ce", "mixup", "mrl", "mndcg"):
        loss = by_name[name]
        assert (loss.weight, loss.margin, loss.alpha, loss.num_mixes) == (0.1, 2.0, 2.0, 3)
        assert (loss.mrl_mask, loss.mixed_bn) == ("faithful", "update")
    t = by_name["mrl_tuned"]
    assert (t.weight, t.margin, t.alpha, t.num_mixes, t.mrl_mask, t.mixed_bn) == (
        1.5,
        2.0,
        2.0,
        3,
        "per_sample",
        "freeze",
    )
    # What the study does take from the loss section, every row alike.
    for loss in by_name.values():
        assert (loss.mixing, loss.smoothing, loss.focal_gamma) == ("cutmix", 0.2, 2.0)


def test_inherited_loss_keys_are_the_loss_section_less_the_row_settings() -> None:
    assert INHERITED_LOSS_KEYS == (
        "mixing",
        "mrl_copies",
        "manifold_layer",
        "smoothing",
        "focal_gamma",
    )


@pytest.mark.parametrize(
    "dvc_file", ["study/dvc.yaml", "study/paper/dvc.yaml", "study/default/dvc.yaml"]
)
def test_study_stages_depend_on_the_loss_keys_their_rows_inherit(dvc_file: str) -> None:
    """A loss key a row inherits but its stage does not track would leave the study stale
    without DVC noticing; one it tracks but does not use reruns it for nothing."""
    stages = yaml.safe_load((ROOT / dvc_file).read_text())["stages"]
    for name in ("loss", "tuned"):
        listed = stages[name]["params"]
        keys = next(iter(listed[0].values())) if isinstance(listed[0], dict) else listed
        assert "loss" not in keys
        loss_keys = [k.removeprefix("loss.") for k in keys if k.startswith("loss.")]
        assert tuple(loss_keys) == INHERITED_LOSS_KEYS, (dvc_file, name)
        assert ("study.paper" in keys) == (name == "loss")
        assert ("study.tuned" in keys) == (name == "tuned")
