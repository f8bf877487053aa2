"""`make study`'s stage entry points: one row per `run`, then `table` in params order."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages import study
from tests.conftest import ROOT
from tests.data.conftest import write_raw_dataset
from tests.image_folder import make_image_folder


@pytest.fixture
def study_args(tmp_path: Path, params: dict[str, Any]) -> list[str]:
    write_raw_dataset("mnist", tmp_path / "raw", n_train=90, n_test=40)
    params["data"].update(dataset="mnist", ood=["noise"], max_train=None)
    params["train"].update(batch_size=32, threads=1)
    params["evaluate"].update(corruptions=["contrast"], severities=[1], shift_images=20)
    params["study"].update(
        max_train=80,
        epochs=1,
        seeds=[0],
        losses=["ce"],
        tuned=[
            {
                "name": "mrl_tuned",
                "loss": "mrl",
                "weight": 0.5,
                "margin": 1.0,
                "alpha": 2.0,
                "num_mixes": 1,
                "mrl_mask": "per_sample",
                "mixed_bn": "freeze",
            }
        ],
    )
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return [
        "--params",
        str(tmp_path / "p.yaml"),
        "--raw",
        str(tmp_path / "raw"),
        "--checksums",
        str(ROOT / "checksums" / "fashion-mnist.sha256"),
        "--rows",
        str(tmp_path / "rows"),
        "--work",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
    ]


def test_rows_then_table(study_args: list[str], tmp_path: Path) -> None:
    assert study.main(["run", "mrl_tuned", "--seed", "0", *study_args]) == 0
    assert study.main(["run", "ce", "--seed", "0", *study_args]) == 0
    row = json.loads((tmp_path / "rows" / "ce-s0.json").read_text())
    assert (row["loss"], row["seed"]) == ("ce", 0) and 0 <= row["accuracy"] <= 100
    assert (tmp_path / "runs" / "ce-s0" / "best.pt").is_file()
    assert study.main(["table", *study_args]) == 0
    with (tmp_path / "out" / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    # losses first, then tuned rows, whatever order the rows were run in
    assert [r["loss"] for r in table] == ["ce", "mrl_tuned"]
    # not the JSON's sorted keys
    assert list(table[0])[:5] == ["loss", "seeds", "accuracy", "accuracy_std", "ece"]
    with (tmp_path / "out" / "results_seeds.csv").open() as fh:
        assert list(next(csv.DictReader(fh)))[:3] == ["loss", "seed", "accuracy"]
    assert (tmp_path / "out" / "shift.png").is_file()


def test_unknown_row_and_missing_row_are_clear_errors(
    study_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert study.main(["run", "nope", "--seed", "0", *study_args]) == 2
    assert "no study row 'nope'; rows are ['ce', 'mrl_tuned']" in capsys.readouterr().err
    assert study.main(["run", "ce", *study_args]) == 2
    assert "run ce needs --seed (study.seeds: [0])" in capsys.readouterr().err
    assert study.main(["table", *study_args]) == 2
    err = capsys.readouterr().err
    assert "ce-s0.json is missing: run `python -m stages.study run ce --seed 0`" in err


def test_a_partial_table_has_the_rows_that_ran_and_names_the_others(
    study_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert study.main(["table", "--partial", *study_args]) == 2
    assert "no study row has run yet" in capsys.readouterr().err
    assert study.main(["run", "ce", "--seed", "0", *study_args]) == 0
    capsys.readouterr()
    assert study.main(["table", "--partial", *study_args]) == 0
    assert "left out (not run yet): mrl_tuned-s0" in capsys.readouterr().err
    with (tmp_path / "out" / "results.csv").open() as fh:
        assert [r["loss"] for r in csv.DictReader(fh)] == ["ce"]


def test_root_sets_the_folder_a_row_trains_on(
    study_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--root replaces data.root, so one preset runs on several folders (study/photos)."""
    params = yaml.safe_load(Path(study_args[1]).read_text())
    params["data"].update(
        dataset="folder", root="no-such-folder", image_size=[12, 12], on_error="skip"
    )
    Path(study_args[1]).write_text(yaml.safe_dump(params, sort_keys=False))
    assert study.main(["run", "ce", "--seed", "0", *study_args]) == 2
    assert "no-such-folder" in capsys.readouterr().err
    folder = make_image_folder(tmp_path / "photos", per_class=12)
    args = ["run", "ce", "--seed", "0", "--root", str(folder), *study_args]
    assert study.main(args) == 0
    row = json.loads((tmp_path / "rows" / "ce-s0.json").read_text())
    assert row["loss"] == "ce" and 0 <= row["accuracy"] <= 100
