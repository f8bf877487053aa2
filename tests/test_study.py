"""The loss comparison study on toy data: one row per loss, the committed CSV's columns."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import load_section
from pipeline.study import (
    LEADING_COLUMNS,
    StudyRun,
    plot_shift,
    run_study,
    table_columns,
    write_table,
)
from tests.conftest import configs, synthetic_prepared


def test_study_writes_one_row_per_loss(params: dict[str, Any], tmp_path: Path) -> None:
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
    rows = run_study(data, runs, model_cfg, train_cfg, eval_cfg, tmp_path / "work")
    write_table(rows, tmp_path / "results.csv", tmp_path / "results.md")
    plot_shift(rows, tmp_path / "shift.png")

    with (tmp_path / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["loss"] for r in table] == ["ce", "mndcg"]
    for column in (
        "accuracy",
        "ece",
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
    assert float(table[0]["ece"]) == round(rows[0]["ece"], 3)
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| loss | accuracy") and len(md) == 4
    assert (tmp_path / "shift.png").read_bytes()[:4] == b"\x89PNG"


def test_table_columns_do_not_depend_on_key_order() -> None:
    row = {
        "train_seconds": 1.0,
        "shift_est_err_s2": 0.0,
        "shift_ece_s2": 0.0,
        "shift_est_err_s1": 0.0,
        "shift_ece_s1": 0.0,
        "auroc_noise": 0.0,
        "auroc_digits": 0.0,
        **{k: 0.0 for k in reversed(LEADING_COLUMNS)},
    }
    assert table_columns(row) == [
        *LEADING_COLUMNS,
        "auroc_digits",
        "auroc_noise",
        "shift_ece_s1",
        "shift_est_err_s1",
        "shift_ece_s2",
        "shift_est_err_s2",
        "train_seconds",
    ]
