"""The loss comparison study on toy data: one row per loss and seed, the committed CSVs'
columns."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import load_section
from pipeline.study import StudyRun, run_study
from pipeline.study_table import plot_shift, write_tables
from tests.conftest import configs, synthetic_prepared


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
    assert md[0].startswith("| loss | seeds | accuracy") and len(md) == 4
    assert (tmp_path / "shift.png").read_bytes()[:4] == b"\x89PNG"
