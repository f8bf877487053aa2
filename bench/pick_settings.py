"""Pick RankMixup settings for a study regime from its trained rows, on the VALIDATION split only.

Every row of a study is a candidate setting: the paper's (``study.paper``), the tuned rows'
(``study.tuned``), each trained on one seed. For each row this reads the row's record
(``<rows>/<row>-s<seed>.json``, committed with the study), takes the validation accuracy and ECE
of the epoch training selected (the best validation accuracy, the checkpoint every figure of the
row comes from), and applies the rule of ``bench/tune_rankmixup.py``: per loss, the lowest
validation ECE among the candidates whose validation accuracy is within ``--max-acc-drop``
points of CE's. The row's test figures are never read, so the pick can be reported beside the
rows it was picked from without having seen their test results.

Reusing the study's rows is what makes a search affordable in the paper's regime (15 to 35 CPU
minutes a candidate); a setting not in the study is searched by adding it as a ``study.tuned``
row. The candidates of the paper regime's search that were not picked are the ``study.tuned``
rows of ``presets/study_paper.yaml`` at commit 3bfbc21 (``git show 3bfbc21:presets/...``).

Usage: python bench/pick_settings.py --params presets/study_paper.yaml --rows study/paper/rows \
           [--seed 0] [--max-acc-drop 0.5] [--out docs/tuning_paper.csv]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import RankingSettings, load_section, read_params
from pipeline.study import row_id, study_runs

FAMILIES = ("mrl", "mndcg")
SETTINGS = tuple(f.name for f in dataclasses.fields(RankingSettings))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One trained setting and what validation said of it (accuracy and ECE in percent)."""

    name: str
    loss: str
    settings: dict[str, object]
    val_accuracy: float
    val_ece: float


def accuracy_floor(candidates: Sequence[Candidate], max_acc_drop: float) -> float:
    """CE's validation accuracy minus ``max_acc_drop`` points.

    Raises:
        ValueError: no CE candidate to measure the floor against.
    """
    ce = next((c for c in candidates if c.loss == "ce"), None)
    if ce is None:
        raise ValueError("no ce row among the candidates: the accuracy floor is CE's")
    return ce.val_accuracy - max_acc_drop


def pick(candidates: Sequence[Candidate], max_acc_drop: float) -> dict[str, Candidate | None]:
    """Per RankMixup loss, the candidate with the lowest validation ECE among those whose
    validation accuracy is at least :func:`accuracy_floor` (None where none is)."""
    floor = accuracy_floor(candidates, max_acc_drop)
    picks: dict[str, Candidate | None] = {}
    for family in FAMILIES:
        ok = [c for c in candidates if c.loss == family and c.val_accuracy >= floor]
        picks[family] = min(ok, key=lambda c: c.val_ece) if ok else None
    return picks


def read_candidates(
    params: Path, rows: Path, seed: int
) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """The study's rows that have run on ``seed``, and (row, why) for the others."""
    raw = read_params(params)
    study = load_section(raw, "study")
    found, missing = [], []
    for run in study_runs(load_section(raw, "loss"), study):
        path = rows / f"{row_id(run.name, seed)}.json"
        if not path.is_file():
            missing.append((run.name, f"{path} does not exist: the row has not run"))
            continue
        row = json.loads(path.read_text())
        if "val_accuracy" not in row:
            missing.append((run.name, f"{path} has no validation figures: rerun the row"))
            continue
        found.append(
            Candidate(
                name=run.name,
                loss=run.loss.name,
                settings={k: getattr(run.loss, k) for k in SETTINGS},
                val_accuracy=float(row["val_accuracy"]),
                val_ece=float(row["val_ece"]),
            )
        )
    return found, missing


def shown(candidate: Candidate, key: str) -> str:
    """A setting as the table shows it: blank where the row's loss does not use it."""
    used = candidate.loss in FAMILIES or (candidate.loss == "mixup" and key == "alpha")
    return str(candidate.settings[key]) if used else ""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("presets/study_paper.yaml"))
    p.add_argument("--rows", type=Path, default=Path("study/paper/rows"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-acc-drop", type=float, default=0.5, help="points of val accuracy")
    p.add_argument("--out", type=Path, help="also write the candidates as CSV")
    args = p.parse_args(argv)
    candidates, missing = read_candidates(args.params, args.rows, args.seed)
    for name, why in missing:
        print(f"left out {name}: {why}", file=sys.stderr)
    try:
        picks = pick(candidates, args.max_acc_drop)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"| row (seed {args.seed}) | loss | {' | '.join(SETTINGS)} | val acc % | val ECE % |")
    print("|" + "---|" * (len(SETTINGS) + 4))
    for c in candidates:
        values = " | ".join(shown(c, k) for k in SETTINGS)
        print(f"| {c.name} | {c.loss} | {values} | {c.val_accuracy:.2f} | {c.val_ece:.2f} |")
    floor = accuracy_floor(candidates, args.max_acc_drop)
    for family, chosen in picks.items():
        if chosen is None:
            print(f"{family}: no candidate with val accuracy >= {floor:.2f}")
        else:
            print(
                f"{family}: pick {chosen.name} (val ECE {chosen.val_ece:.2f}, "
                f"val acc {chosen.val_accuracy:.2f} >= {floor:.2f})"
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["row", "seed", "loss", *SETTINGS, "val_accuracy", "val_ece"])
            for c in candidates:
                settings = (shown(c, k) for k in SETTINGS)
                scores = (f"{c.val_accuracy:.2f}", f"{c.val_ece:.2f}")
                writer.writerow([c.name, args.seed, c.loss, *settings, *scores])
    return 0


if __name__ == "__main__":
    sys.exit(main())
