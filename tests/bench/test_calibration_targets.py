"""bench/calibration_targets.py: the issue's targets checked row by row, with hand-computed
intervals."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from bench import calibration_targets as script
from tests.conftest import ROOT

COLUMNS = ["loss", "seed", "accuracy", "ece", "auroc_digits", "train_seconds"]
CE = [
    ("ce", 0, 88.0, 4.0, 80.0, 10.0),
    ("ce", 1, 89.0, 6.0, 82.0, 30.0),
    ("ce", 2, 90.0, 5.0, 84.0, 12.0),
]


def write(path: Path, rows: list[tuple[object, ...]]) -> Path:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(COLUMNS)
        out.writerows(rows)
    return path


def verdicts(tmp_path: Path, rows: list[tuple[object, ...]]) -> dict[str, script.RowVerdict]:
    table = script.read_rows(write(tmp_path / "seeds.csv", rows))
    return {v.loss: v for v in script.check_targets(table)}


def test_a_row_short_of_the_targets_says_which_and_by_how_much(tmp_path: Path) -> None:
    """CE's ECE [4, 6, 5], half [2, 3, 2.5]; the row's [1, 2, 1.5]: d = -1 on every seed, an
    interval of width 0 below 0: met (ratio 1.5 / 5 = 0.30). Accuracy d = [0, -0.5, -0.5]:
    mean -1/3, std sqrt(1/12) = 0.288675, half-width t(0.975, 2) * 0.288675 / sqrt(3) =
    4.302653 * 0.166667 = 0.717109, so [-1.0504, +0.3838]: the mean is within 0.5 points, the
    interval is not: not shown. AUROC -10 on every seed: missed. Training: fastest 20 s against
    CE's fastest 10 s (not the means, 22.3 / 17.3): 2.0."""
    rows = [*CE, ("mrl", 0, 88.0, 1.0, 70.0, 25.0), ("mrl", 1, 88.5, 2.0, 72.0, 20.0)]
    rows.append(("mrl", 2, 89.5, 1.5, 74.0, 22.0))
    v = verdicts(tmp_path, rows)["mrl"]
    ece, acc, auroc = v.checks
    assert (ece.name, acc.name, auroc.name) == ("ece", "accuracy", "auroc_digits")
    assert ece.diff.mean == pytest.approx(-1.0) and ece.diff.high == pytest.approx(-1.0)
    assert ece.verdict == script.MET
    assert v.ece_ratio == pytest.approx(0.30)
    assert acc.diff.mean == pytest.approx(-1 / 3)
    assert (acc.diff.low, acc.diff.high) == pytest.approx((-1.050442, 0.383776), abs=1e-5)
    assert acc.verdict == script.NOT_SHOWN
    assert auroc.diff.mean == pytest.approx(-10.0) and auroc.verdict == script.MISSED
    assert v.train_ratio == pytest.approx(2.0)
    assert v.seeds == 3 and not v.meets


def test_a_row_clearing_every_bound_meets_them_and_one_seed_never_does(tmp_path: Path) -> None:
    """Accuracy +1 and AUROC +2 on every seed, ECE a third of CE's: every interval clears its
    bound. The same row on seed 0 alone has no interval: "not shown" at best."""
    good = [("rk", s, acc + 1, ece / 3, auroc + 2, 40.0) for _, s, acc, ece, auroc, _ in CE]
    v = verdicts(tmp_path, [*CE, *good])["rk"]
    assert [c.verdict for c in v.checks] == [script.MET] * 3 and v.meets
    single = verdicts(tmp_path, [*CE, good[0]])["rk"]
    assert single.seeds == 1
    assert [c.verdict for c in single.checks] == [script.NOT_SHOWN] * 3 and not single.meets


def test_rows_pair_only_on_seeds_the_baseline_has(tmp_path: Path) -> None:
    """Seed 7 has no CE row: it is left out, so the verdict rests on seeds 0 and 1."""
    rows = [*CE[:2], ("rk", 0, 88.0, 1.0, 80.0, 10.0), ("rk", 1, 89.0, 1.0, 82.0, 10.0)]
    rows.append(("rk", 7, 10.0, 90.0, 0.0, 10.0))
    assert verdicts(tmp_path, rows)["rk"].seeds == 2


def test_the_report_and_its_errors(tmp_path: Path) -> None:
    table = write(tmp_path / "seeds.csv", [*CE, ("rk", 0, 88.0, 1.0, 80.0, 10.0)])
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "calibration_targets.py"), str(table)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| row | seeds | ECE / ce's | ECE - ½ ce's | Δ accuracy |")
    assert lines[2] == (
        "| rk | 1 | 0.25 | -1.00 (one seed): not shown | +0.00 (one seed): not shown | "
        "+0.00 (one seed): not shown | 1.0 | no |"
    )
    assert lines[-1] == "rows meeting every target: none"
    with pytest.raises(SystemExit, match="no 'ce' row"):
        script.check_targets(
            script.read_rows(write(tmp_path / "no_ce.csv", [("rk", 0, 1, 1, 1, 1)]))
        )
    bad = tmp_path / "bad.csv"
    bad.write_text("loss,seed\nce,0\n")
    with pytest.raises(SystemExit, match="not a per-seed study table"):
        script.read_rows(bad)
