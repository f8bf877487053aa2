"""bench/compare_studies.py: two per-seed tables paired by loss and seed, by hand."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare_studies.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(path: Path, rows: list[tuple[str, int, float, float]]) -> Path:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["loss", "seed", "accuracy", "ece"])
        out.writerows(rows)
    return path


def test_paired_by_seed_with_the_old_spread_as_the_yardstick(tmp_path: Path) -> None:
    """ECE old [5, 4, 6] (std 1), new [5.5, 4.5, 6.5]: +0.5 each seed, within spread. Accuracy
    old [88, 89, 90] (std 1), new [86, 87, 88]: -2 each seed, beyond it. mrl only in the old
    table: left out."""
    old = write(
        tmp_path / "old.csv",
        [("ce", 0, 88, 5), ("ce", 1, 89, 4), ("ce", 2, 90, 6), ("mrl", 0, 87, 3)],
    )
    new = write(tmp_path / "new.csv", [("ce", 2, 88, 6.5), ("ce", 0, 86, 5.5), ("ce", 1, 87, 4.5)])
    done = run_script(str(old), str(new), "--metrics", "accuracy", "ece")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4  # header, rule, ce accuracy, ce ece
    assert lines[2] == (
        "| ce | accuracy | 3 | 89.00 ± 1.00 | 87.00 ± 1.00 | -2.00 [-2.00, -2.00] | no |"
    )
    assert lines[3].startswith("| ce | ece | 3 | 5.00 ± 1.00 | 5.50 ± 1.00 | +0.50 [+0.50, +0.50]")
    assert lines[3].endswith("| yes |")


def test_tables_without_a_common_pair_are_an_error(tmp_path: Path) -> None:
    old = write(tmp_path / "old.csv", [("ce", 0, 88, 5)])
    new = write(tmp_path / "new.csv", [("ce", 1, 88, 5)])
    done = run_script(str(old), str(new))
    assert done.returncode != 0 and "share no (loss, seed) pair" in done.stderr


def test_suffix_pairs_a_studys_variant_rows_with_their_namesakes(tmp_path: Path) -> None:
    """One table: mrl ECE [3, 4] against mrl_bnfrozen [5, 7] gives +2.5 with an interval of
    ±t(0.975, 1) * std([2, 3]) / sqrt(2) = ±12.706 * 0.7071 / 1.4142 = ±6.353; ce has no
    ce_bnfrozen and mrl_bnfrozen no mrl_bnfrozen_bnfrozen: both left out."""
    table = write(
        tmp_path / "seeds.csv",
        [
            ("ce", 0, 88, 5),
            ("mrl", 0, 88, 3),
            ("mrl", 1, 89, 4),
            ("mrl_bnfrozen", 1, 90, 7),
            ("mrl_bnfrozen", 0, 88, 5),
        ],
    )
    done = run_script(str(table), str(table), "--metrics", "ece", "--suffix", "_bnfrozen")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2:] == [
        "| mrl → mrl_bnfrozen | ece | 2 | 3.50 ± 0.71 | 6.00 ± 1.41 | +2.50 [-3.85, +8.85] | no |"
    ]
    done = run_script(str(table), str(table), "--suffix", "_tuned")
    assert done.returncode != 0 and "share no (X, seed) and (X_tuned, seed) pair" in done.stderr


def test_explicit_pairs_match_rows_of_other_names(tmp_path: Path) -> None:
    """OLD's mndcg accuracy [88, 90] against NEW's ce_x [87, 88]: -1.5 with ±12.706 * 0.7071 /
    1.4142 = ±6.353; a pair naming no row is left out, and a malformed one is refused."""
    old = write(tmp_path / "old.csv", [("mndcg", 0, 88, 1), ("mndcg", 1, 90, 1)])
    new = write(tmp_path / "new.csv", [("ce_x", 0, 87, 1), ("ce_x", 1, 88, 1)])
    args = [str(old), str(new), "--metrics", "accuracy", "--pair", "mndcg:ce_x"]
    done = run_script(*args, "--pair", "mrl:ce_x")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2:] == [
        "| mndcg → ce_x | accuracy | 2 | 89.00 ± 1.41 | 87.50 ± 0.71 | -1.50 [-7.85, +4.85] | no |"
    ]
    done = run_script(*args[:-1], "mndcg-ce_x")
    assert done.returncode == 2 and "--pair takes OLD_ROW:NEW_ROW" in done.stderr
