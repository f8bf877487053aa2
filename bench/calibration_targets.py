"""Does any study row meet the project's calibration targets against CE? One table says.

The targets (issue 13, item 6), each for one row against the baseline (CE) trained with the
same seeds on the same split, each difference judged by its paired 95% t interval over seeds
(``pipeline.metrics.seeds.paired_difference``):

- **ECE at most half of CE's**: with ``d_s = ece_row(s) - ece_ce(s) / 2`` per seed, the
  interval of ``mean(d)`` lies below 0. Halving the seed-by-seed difference keeps the pairing,
  and ``mean(d) <= 0`` is exactly ``mean(ece_row) <= mean(ece_ce) / 2``.
- **Accuracy within 0.5 points**: the interval of ``acc_row - acc_ce`` lies at or above -0.5.
- **OOD AUROC not below CE's**, for every ``auroc_*`` column (each OOD set): the interval of
  ``auroc_row - auroc_ce`` lies at or above 0.

Each target reads ``met`` when its interval clears the bound, ``not shown`` when the mean
difference is on the right side but the interval crosses the bound (one seed, which gives no
interval, is never more than that), and ``missed`` when the mean difference is on the wrong
side. A row meets the targets only when every one reads ``met``. The training cost beside it is
the ratio of the fastest ``train_seconds`` of each row over the paired seeds: studies share the
cores with other jobs at times (the small-pool study's CE took 23 to 461 s over five seeds), and
the least-contended run is the best estimate of the cost itself.

Written here rather than in ``pipeline.study_table`` because it is a verdict on one issue's
bounds, not a statistic every study table should carry.

Usage: python bench/calibration_targets.py study/default/results_seeds.csv [--baseline ce]
       [--ece-ratio 0.5] [--max-acc-drop 0.5]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.metrics.seeds import PairedDifference, paired_difference

MET, NOT_SHOWN, MISSED = "met", "not shown", "missed"


@dataclass(frozen=True)
class Check:
    """One target for one row: the paired difference, the bound it must clear, its verdict."""

    name: str
    diff: PairedDifference
    bound: float
    below: bool  # True: the interval must lie below ``bound``; False: at or above it

    @property
    def verdict(self) -> str:
        if self.below:
            right_side, cleared = self.diff.mean <= self.bound, self.diff.high < self.bound
        else:
            right_side, cleared = self.diff.mean >= self.bound, self.diff.low >= self.bound
        if not right_side:
            return MISSED
        # NaN bounds (one seed) compare False: never more than "not shown".
        return MET if cleared else NOT_SHOWN


@dataclass(frozen=True)
class RowVerdict:
    """Every target checked for one row, and what the row costs against the baseline."""

    loss: str
    seeds: int
    ece_ratio: float
    checks: list[Check]
    train_ratio: float

    @property
    def meets(self) -> bool:
        return all(c.verdict == MET for c in self.checks)


def read_rows(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    """A per-seed study table (``results_seeds.csv``) keyed by (loss, seed)."""
    with path.open() as fh:
        reader = csv.DictReader(fh)
        missing = {"loss", "seed", "accuracy", "ece"} - set(reader.fieldnames or [])
        if missing:
            raise SystemExit(f"{path}: not a per-seed study table (no column {sorted(missing)})")
        return {(r["loss"], int(r["seed"])): r for r in reader}


def _pair(
    rows: dict[tuple[str, int], dict[str, str]],
    loss: str,
    baseline: str,
    seeds: list[int],
    column: str,
) -> tuple[list[float], list[float]]:
    """``column`` of ``loss`` and of ``baseline``, seed by seed in the same order."""
    return tuple([float(rows[(name, s)][column]) for s in seeds] for name in (loss, baseline))  # type: ignore[return-value]


def _mean_ratio(a: list[float], b: list[float]) -> float:
    return (sum(a) / len(a)) / (sum(b) / len(b)) if sum(b) else math.nan


def _fastest_ratio(a: list[float], b: list[float]) -> float:
    return min(a) / min(b) if min(b) > 0 else math.nan


def check_targets(
    rows: dict[tuple[str, int], dict[str, str]],
    baseline: str = "ce",
    ece_ratio: float = 0.5,
    max_acc_drop: float = 0.5,
) -> list[RowVerdict]:
    """Each non-baseline row's verdicts over the seeds it shares with ``baseline``.

    Args:
        rows: A per-seed table from :func:`read_rows`.
        baseline: The row every other is paired with.
        ece_ratio: The row's mean ECE must be at most this share of the baseline's.
        max_acc_drop: Accuracy points the row may lose against the baseline.

    Returns:
        One verdict per row that shares at least one seed with the baseline, in table order.

    Raises:
        SystemExit: If the table has no baseline row.
    """
    base_seeds = {s for loss, s in rows if loss == baseline}
    if not base_seeds:
        raise SystemExit(
            f"no {baseline!r} row to compare with (rows: {sorted({k[0] for k in rows})})"
        )
    columns = next(iter(rows.values())).keys()
    aurocs = [c for c in columns if c.startswith("auroc_")]
    out = []
    for loss in dict.fromkeys(loss for loss, _ in rows):
        seeds = sorted(s for (name, s) in rows if name == loss and s in base_seeds)
        if loss == baseline or not seeds:
            continue
        ece, ece_ce = _pair(rows, loss, baseline, seeds, "ece")
        # Accuracy and every OOD set's AUROC are the same kind of check: the interval of the
        # plain difference at or above a floor.
        floors = {"accuracy": -max_acc_drop, **dict.fromkeys(aurocs, 0.0)}
        checks = [
            Check("ece", paired_difference(ece, [ece_ratio * e for e in ece_ce]), 0.0, True),
            *(
                Check(
                    col, paired_difference(*_pair(rows, loss, baseline, seeds, col)), floor, False
                )
                for col, floor in floors.items()
            ),
        ]
        train = math.nan
        if "train_seconds" in columns and all(
            rows[(name, s)]["train_seconds"] for name in (loss, baseline) for s in seeds
        ):
            train = _fastest_ratio(*_pair(rows, loss, baseline, seeds, "train_seconds"))
        out.append(RowVerdict(loss, len(seeds), _mean_ratio(ece, ece_ce), checks, train))
    return out


def _interval(check: Check) -> str:
    d = check.diff
    if math.isnan(d.low):
        return f"{d.mean:+.2f} (one seed): {check.verdict}"
    return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]: {check.verdict}"


def markdown(verdicts: list[RowVerdict], baseline: str) -> str:
    """The verdicts as a markdown table, one row per study row."""
    names = [c.name for c in verdicts[0].checks] if verdicts else []
    heads = {"ece": f"ECE - ½ {baseline}'s", "accuracy": "Δ accuracy"}
    header = ["row", "seeds", f"ECE / {baseline}'s"]
    header += [heads.get(n, f"Δ {n.replace('_', ' ')}") for n in names]
    header += [f"train × {baseline}", "meets all"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in verdicts:
        cells = [v.loss, str(v.seeds), f"{v.ece_ratio:.2f}"]
        cells += [_interval(c) for c in v.checks]
        cells += ["" if math.isnan(v.train_ratio) else f"{v.train_ratio:.1f}"]
        cells += ["**yes**" if v.meets else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", type=Path, help="a study's results_seeds.csv")
    p.add_argument("--baseline", default="ce")
    p.add_argument("--ece-ratio", type=float, default=0.5)
    p.add_argument("--max-acc-drop", type=float, default=0.5)
    args = p.parse_args(argv)
    if not args.table.is_file():
        p.error(f"{args.table}: no such file (a study writes results_seeds.csv)")
    verdicts = check_targets(
        read_rows(args.table), args.baseline, args.ece_ratio, args.max_acc_drop
    )
    if not verdicts:
        raise SystemExit(f"{args.table}: no row shares a seed with {args.baseline!r}")
    print(markdown(verdicts, args.baseline))
    met = [v.loss for v in verdicts if v.meets]
    print(f"\nrows meeting every target: {', '.join(met) if met else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
