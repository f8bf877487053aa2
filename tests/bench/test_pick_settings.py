"""bench/pick_settings.py: the validation-only pick among a study's trained rows, by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from bench import pick_settings as script
from tests.conftest import ROOT

PRESET = ROOT / "presets" / "study_paper.yaml"  # 60 epochs; rows ce ... mrl_tuned_bnfrozen


def candidate(name: str, loss: str, accuracy: float, ece: float) -> script.Candidate:
    return script.Candidate(name, loss, {}, accuracy, ece)


def test_lowest_ece_within_half_a_point_of_ce_accuracy() -> None:
    """CE 88.8% sets the floor at 88.3%. MRL: 86.15% has the lowest ECE (1.75) but is under
    the floor, so 88.5% with 2.58 wins over 88.3% (exactly the floor, admitted) with 2.9.
    M-NDCG's only row, 87.95%, is under it: no pick."""
    picks = script.pick(
        [
            candidate("ce", "ce", 88.8, 2.13),
            candidate("mrl_tuned_bnfrozen", "mrl", 86.15, 1.75),
            candidate("mrl_bnfrozen", "mrl", 88.5, 2.58),
            candidate("mrl_at_floor", "mrl", 88.3, 2.9),
            candidate("mndcg", "mndcg", 87.95, 2.13),
        ],
        max_acc_drop=0.5,
    )
    assert picks["mrl"] is not None and picks["mrl"].name == "mrl_bnfrozen"
    assert picks["mndcg"] is None
    # A wider floor (86.0%) admits the lower-ECE row.
    wide = script.pick(
        [candidate("ce", "ce", 88.8, 2.13), candidate("a", "mrl", 86.15, 1.75)],
        max_acc_drop=2.8,
    )
    assert wide["mrl"] is not None and wide["mrl"].name == "a"


def test_no_ce_row_is_an_error() -> None:
    with pytest.raises(ValueError, match="no ce row"):
        script.pick([candidate("mrl", "mrl", 88.0, 2.0)], max_acc_drop=0.5)


def save_run(
    runs: Path, row: str, epoch: int, history: list[tuple[float, float]], best: int
) -> None:
    """A checkpoint as training leaves it: per epoch validation accuracy and ECE (fractions)."""
    (runs / f"{row}-s0").mkdir(parents=True)
    extra = {
        "best_epoch": best,
        "best_val_accuracy": history[best - 1][0],
        "history": [{"val_accuracy": a, "val_ece": e} for a, e in history],
    }
    torch.save(
        {"model": {}, "meta": {}, "epoch": epoch, "extra": extra}, runs / f"{row}-s0" / "last.pt"
    )


def test_reads_the_selected_epoch_of_finished_runs_and_leaves_out_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CE's best epoch is 2 of 60 (0.888, 0.0213), not its last; mrl_bnfrozen's 0.885 / 0.0258
    is within 0.5 points of 88.8 and picked; mndcg stopped at epoch 30 and is left out, as are
    rows with no run."""
    runs = tmp_path / "runs"
    save_run(runs, "ce", 60, [(0.80, 0.05), (0.888, 0.0213), (0.87, 0.01)], best=2)
    save_run(runs, "mrl_bnfrozen", 60, [(0.885, 0.0258)], best=1)
    save_run(runs, "mrl_tuned_bnfrozen", 60, [(0.8615, 0.0175)], best=1)
    save_run(runs, "mndcg", 30, [(0.90, 0.001)], best=1)
    out = tmp_path / "picks.csv"
    code = script.main(["--params", str(PRESET), "--runs", str(runs), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0
    assert "left out mndcg: trained 30 of 60 epochs" in printed.err
    assert "left out mixup:" in printed.err
    assert "mrl: pick mrl_bnfrozen (val ECE 2.58, val acc 88.50 >= 88.30)" in printed.out
    assert "mndcg: no candidate with val accuracy >= 88.30" in printed.out
    with out.open() as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"ce", "mrl_bnfrozen", "mrl_tuned_bnfrozen"}
    assert (rows["ce"]["val_accuracy"], rows["ce"]["val_ece"]) == ("88.80", "2.13")
    assert rows["ce"]["weight"] == ""  # CE uses no RankMixup setting
    frozen = rows["mrl_tuned_bnfrozen"]
    assert (frozen["weight"], frozen["mrl_mask"], frozen["mixed_bn"]) == (
        "1.0",
        "per_sample",
        "freeze",
    )


def test_without_a_finished_ce_run_it_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    save_run(runs, "mrl", 60, [(0.885, 0.0258)], best=1)
    assert script.main(["--params", str(PRESET), "--runs", str(runs)]) == 2
    assert "error: no ce row" in capsys.readouterr().err
