"""bench/pick_settings.py: the validation-only pick among a study's trained rows, by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from bench import pick_settings as script
from tests.conftest import ROOT

PRESET = ROOT / "presets" / "study_paper.yaml"


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


def preset_with_a_search_candidate(tmp_path: Path) -> Path:
    """The paper preset (60 epochs; rows ce ... mndcg_bnfrozen) plus one candidate that is not
    among its rows, as a search adds one (``study.tuned``)."""
    params = yaml.safe_load(PRESET.read_text())
    params["study"]["tuned"].append(
        {"name": "mrl_tuned_bnfrozen", "loss": "mrl", "weight": 1.0, "margin": 2.0,
         "alpha": 2.0, "num_mixes": 3, "mrl_mask": "per_sample", "mixed_bn": "freeze"}
    )  # fmt: skip
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def save_row(rows: Path, name: str, val_accuracy: float | None, val_ece: float = 0.0) -> None:
    """A study row as `stages.study run` writes it (percent); test figures that would win."""
    row = {"loss": name, "seed": 0, "accuracy": 99.0, "ece": 0.01}
    if val_accuracy is not None:
        row.update(val_accuracy=val_accuracy, val_ece=val_ece)
    rows.mkdir(exist_ok=True)
    (rows / f"{name}-s0.json").write_text(json.dumps(row))


def test_reads_the_rows_validation_figures_and_leaves_out_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CE 88.8% sets the floor at 88.3%; mrl_bnfrozen's 88.5 / 2.58 is within it and picked over
    mrl_tuned_bnfrozen's lower ECE (1.75 at 86.15%); mndcg's row predates validation figures
    and is left out, as are rows that have not run. Test figures play no part."""
    rows = tmp_path / "rows"
    save_row(rows, "ce", 88.8, 2.13)
    save_row(rows, "mrl_bnfrozen", 88.5, 2.58)
    save_row(rows, "mrl_tuned_bnfrozen", 86.15, 1.75)
    save_row(rows, "mndcg", None)
    out = tmp_path / "picks.csv"
    params = preset_with_a_search_candidate(tmp_path)
    code = script.main(["--params", str(params), "--rows", str(rows), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0
    assert "left out mndcg: " in printed.err and "has no validation figures" in printed.err
    assert "left out mixup: " in printed.err and "the row has not run" in printed.err
    assert "mrl: pick mrl_bnfrozen (val ECE 2.58, val acc 88.50 >= 88.30)" in printed.out
    assert "mndcg: no candidate with val accuracy >= 88.30" in printed.out
    with out.open() as fh:
        picked = {r["row"]: r for r in csv.DictReader(fh)}
    assert set(picked) == {"ce", "mrl_bnfrozen", "mrl_tuned_bnfrozen"}
    assert (picked["ce"]["val_accuracy"], picked["ce"]["val_ece"]) == ("88.80", "2.13")
    assert picked["ce"]["weight"] == ""  # CE uses no RankMixup setting
    frozen = picked["mrl_tuned_bnfrozen"]
    assert (frozen["weight"], frozen["mrl_mask"], frozen["mixed_bn"]) == (
        "1.0",
        "per_sample",
        "freeze",
    )


def test_without_a_ce_row_it_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "rows"
    save_row(rows, "mrl", 88.5, 2.58)
    assert script.main(["--params", str(PRESET), "--rows", str(rows)]) == 2
    assert "error: no ce row" in capsys.readouterr().err
