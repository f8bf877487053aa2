"""bench/train_step.py: one row per objective and precision, bf16 with its speed-up."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_rows_for_each_objective_and_precision() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "train_step.py"),
            "--rounds",
            "1",
            "--batch-size",
            "8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [
        (name, precision)
        for precision in ("fp32", "bf16")
        for name in ("ce", "mixup", "mrl", "mndcg")
    ]
    assert rows[0][4] == "1.00"  # fp32 ce is the base
    assert all(len(r) == 6 and float(r[5]) > 0 for r in rows[4:])  # bf16 rows: a speed-up
    assert all(len(r) == 5 for r in rows[:4])
