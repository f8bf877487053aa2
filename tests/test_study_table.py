"""The study's summaries and tables from per-seed rows, with hand-computed numbers."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

from pipeline.study_table import LEADING_COLUMNS, markdown, summarise, table_columns, write_tables


def row(loss: str, seed: int, accuracy: float, ece: float, **extra: float) -> dict[str, Any]:
    return {
        "loss": loss,
        "seed": seed,
        "accuracy": accuracy,
        "ece": ece,
        "ece_ci95_low": ece - 1,
        "ece_ci95_high": ece + 1,
        "ece_ts": ece / 2,
        "auroc_noise": 90.0 + seed,
        "shift_ece_s1": 2.0 * ece,
        "shift_est_err_s1": 1.0,
        "train_seconds": 10.0,
        **extra,
    }


ROWS = [
    row("ce", 0, 88.0, 5.0),
    row("ce", 1, 89.0, 4.0),
    row("ce", 2, 90.0, 6.0),
    row("mndcg", 2, 90.0, 3.0),  # seeds in any order: paired by seed, not by position
    row("mndcg", 0, 88.5, 2.0),
    row("mndcg", 1, 88.0, 2.0),
]


def test_summaries_hold_means_spreads_and_paired_differences_from_ce() -> None:
    ce, mndcg = summarise(ROWS)
    assert (ce["loss"], ce["seeds"], mndcg["seeds"]) == ("ce", 3, 3)
    assert (ce["accuracy"], ce["accuracy_std"]) == pytest.approx((89.0, 1.0))
    assert (ce["ece"], ce["ece_std"]) == pytest.approx((5.0, 1.0))
    # the interval bounds are averaged, not spread: the test set's noise, seed by seed
    assert (ce["ece_ci95_low"], ce["ece_ci95_high"]) == (4.0, 6.0)
    assert "ece_ci95_low_std" not in ce and "d_ece" not in ce
    # ECE differences by seed: 2-5, 2-4, 3-6 = -3, -2, -3: mean -8/3, std 0.5774,
    # half-width 4.3027 * 0.5774 / sqrt(3) = 1.4343
    assert mndcg["d_ece"] == pytest.approx(-8 / 3)
    assert (mndcg["d_ece_low"], mndcg["d_ece_high"]) == pytest.approx((-4.1009, -1.2324), 1e-4)
    # accuracy by seed: 0.5, -1, 0: mean -1/6, an interval across zero
    assert mndcg["d_accuracy"] == pytest.approx(-1 / 6)
    assert mndcg["d_accuracy_low"] < 0 < mndcg["d_accuracy_high"]
    assert mndcg["d_auroc_noise"] == 0.0 and mndcg["d_ece_ts"] == pytest.approx(-4 / 3)


def test_markdown_bolds_only_the_differences_beyond_their_interval() -> None:
    table = markdown(summarise(ROWS)).splitlines()
    assert table[0].startswith("| loss | seeds | accuracy | ECE | ECE after TS | AUROC noise |")
    assert table[2].startswith("| ce | 3 | 89.00 ± 1.00 | 5.00 ± 1.00 |")
    cells = table[3].split(" | ")
    assert "**-2.67 [-4.10, -1.23]**" in cells  # ECE: beyond noise
    # accuracy: std of [0.5, -1, 0] is 0.7638, half-width 4.3027 * 0.7638 / sqrt(3) = 1.8974
    assert "-0.17 [-2.06, +1.73]" in cells  # within noise, not bold


def test_one_seed_gives_means_without_spreads_or_intervals(tmp_path: Path) -> None:
    rows = [row("ce", 0, 88.0, 5.0), row("mrl", 0, 87.0, 3.0)]
    summaries = write_tables(rows, tmp_path)
    assert math.isnan(summaries[0]["ece_std"]) and math.isnan(summaries[1]["d_ece_low"])
    with (tmp_path / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [(r["loss"], r["seeds"], r["ece_std"], r["d_ece"]) for r in table] == [
        ("ce", "1", "", ""),
        ("mrl", "1", "", "-2.0"),
    ]
    with (tmp_path / "results_seeds.csv").open() as fh:
        assert [r["seed"] for r in csv.DictReader(fh)] == ["0", "0"]
    assert "| mrl | 1 | 87.00 | 3.00 |" in (tmp_path / "results.md").read_text()


def test_table_columns_do_not_depend_on_key_order() -> None:
    row_ = {
        "train_seconds": 1.0,
        "shift_est_err_s2": 0.0,
        "shift_ece_s2": 0.0,
        "shift_est_err_s1": 0.0,
        "shift_ece_s1": 0.0,
        "auroc_noise": 0.0,
        "auroc_digits": 0.0,
        **{k: 0.0 for k in reversed(LEADING_COLUMNS)},
    }
    assert table_columns(row_) == [
        *LEADING_COLUMNS,
        "auroc_digits",
        "auroc_noise",
        "shift_ece_s1",
        "shift_est_err_s1",
        "shift_ece_s2",
        "shift_est_err_s2",
        "train_seconds",
    ]


def test_a_column_only_ranking_rows_have_is_kept_and_left_blank_for_ce(tmp_path: Path) -> None:
    rows = [row("ce", 0, 88.0, 5.0), row("mndcg", 0, 87.0, 3.0, rank_grad_share=0.25)]
    summaries = write_tables(rows, tmp_path)
    assert "rank_grad_share" not in summaries[0] and summaries[1]["rank_grad_share"] == 0.25
    with (tmp_path / "results_seeds.csv").open() as fh:
        assert [r["rank_grad_share"] for r in csv.DictReader(fh)] == ["", "0.25"]
    table = (tmp_path / "results.md").read_text().splitlines()
    assert "rank share of gradient" in table[0]
    column = table[0].split(" | ").index("rank share of gradient")
    assert table[2].split(" | ")[column] == "" and table[3].split(" | ")[column] == "0.25"


def test_rows_say_where_they_trained_and_pairs_across_machines_are_named(tmp_path: Path) -> None:
    """CE ran seeds 0-1 on A; mndcg seed 0 on A and seed 1 on B: one of its two pairs with CE
    crosses machines. The device is text: kept per seed, never averaged."""
    rows = [
        row("ce", 0, 88.0, 5.0, device="A"),
        row("ce", 1, 89.0, 4.0, device="A"),
        row("mndcg", 0, 88.5, 2.0, device="A"),
        row("mndcg", 1, 88.0, 2.0, device="B"),
    ]
    summaries = write_tables(rows, tmp_path)
    assert summaries[0]["devices"] == "A" and "pairs_across_devices" not in summaries[0]
    assert summaries[1]["devices"] == "A; B" and summaries[1]["pairs_across_devices"] == 1
    assert "device_std" not in summaries[1] and summaries[1]["ece"] == 2.0
    text = (tmp_path / "results.md").read_text()
    assert "Trained on: A; B." in text
    assert "another machine (their differences include the processors' numerics): mndcg (1)." in (
        text
    )
    with (tmp_path / "results_seeds.csv").open() as fh:
        seeds = list(csv.DictReader(fh))
    assert list(seeds[0])[-1] == "device" and [r["device"] for r in seeds] == ["A", "A", "A", "B"]
    # Rows that do not say (older studies) give neither column nor sentence.
    assert "devices" not in summarise(ROWS)[1] and "Trained on" not in markdown(summarise(ROWS))
