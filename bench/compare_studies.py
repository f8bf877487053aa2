"""Compare two runs of the study seed by seed (e.g. fp32 training against bf16), or two rows
of one study (e.g. ``mrl`` against ``mrl_bnfrozen``).

Reads two per-seed tables (``study/results_seeds.csv``; an earlier one from git with
``git show REV:study/results_seeds.csv > old.csv``), pairs rows by loss and seed, and prints for
each loss and metric both runs' mean ± std over seeds and the paired difference (new - old)
with its 95% t interval. "within spread": the difference's magnitude is at most the old run's
standard deviation over seeds, i.e. the change is no larger than what a new seed does. With
``--suffix S``, row ``X`` of OLD is paired with row ``X`` + S of NEW (the same file twice
compares a study's variants with their namesakes); ``--pair A:B`` pairs OLD's row A with NEW's
row B, for rows whose names do not match.

Usage: python bench/compare_studies.py OLD.csv NEW.csv [--metrics accuracy ece ece_ts]
       python bench/compare_studies.py study/results_seeds.csv study/results_seeds.csv \
           --suffix _bnfrozen
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from pipeline.metrics.seeds import paired_difference, spread


def read_rows(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    with path.open() as fh:
        return {(r["loss"], int(r["seed"])): r for r in csv.DictReader(fh)}


def compare(
    old: dict[tuple[str, int], dict[str, str]],
    new: dict[tuple[str, int], dict[str, str]],
    metrics: list[str],
    suffix: str = "",
    pairs: list[tuple[str, str]] | None = None,
) -> list[dict[str, object]]:
    """One entry per loss and metric over the (loss, seed) pairs both tables hold; OLD's
    ``loss`` is paired with NEW's ``loss + suffix``, or, given ``pairs``, with the row each
    names."""
    if pairs is None:
        pairs = [(loss, loss + suffix) for loss in dict.fromkeys(loss for loss, _ in old)]
    out = []
    for loss, twin in pairs:
        seeds = sorted(s for (name, s) in old if name == loss and (twin, s) in new)
        if not seeds:
            continue
        for metric in metrics:
            a = [float(old[(loss, s)][metric]) for s in seeds]
            b = [float(new[(twin, s)][metric]) for s in seeds]
            before, after = spread(a), spread(b)
            diff = paired_difference(b, a)
            out.append(
                {
                    "loss": loss if twin == loss else f"{loss} → {twin}",
                    "metric": metric,
                    "seeds": len(seeds),
                    "old": before,
                    "new": after,
                    "diff": diff,
                    "within_spread": abs(diff.mean) <= before.std,
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--metrics", nargs="+", default=["accuracy", "ece", "ece_ts"])
    p.add_argument(
        "--suffix", default="", help="pair OLD's row X with NEW's row X + SUFFIX (same seed)"
    )
    p.add_argument(
        "--pair",
        action="append",
        metavar="OLD_ROW:NEW_ROW",
        help="pair OLD's row OLD_ROW with NEW's row NEW_ROW (repeatable; replaces --suffix)",
    )
    args = p.parse_args(argv)
    pairs = None
    if args.pair:
        if not all(pair.count(":") == 1 for pair in args.pair):
            p.error(f"--pair takes OLD_ROW:NEW_ROW, got {args.pair}")
        pairs = [tuple(pair.split(":")) for pair in args.pair]
    rows = compare(read_rows(args.old), read_rows(args.new), args.metrics, args.suffix, pairs)  # type: ignore[arg-type]
    if not rows:
        if pairs:
            pairing = f"pair of {args.pair} for any seed"
        elif args.suffix:
            pairing = f"(X, seed) and (X{args.suffix}, seed) pair"
        else:
            pairing = "(loss, seed) pair"
        raise SystemExit(f"the two tables share no {pairing}")
    print("| loss | metric | seeds | old | new | new - old [95% CI] | within spread |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        old, new, diff = r["old"], r["new"], r["diff"]
        print(
            f"| {r['loss']} | {r['metric']} | {r['seeds']} | {old.mean:.2f} ± {old.std:.2f} | "  # type: ignore[attr-defined]
            f"{new.mean:.2f} ± {new.std:.2f} | {diff.mean:+.2f} [{diff.low:+.2f}, "  # type: ignore[attr-defined]
            f"{diff.high:+.2f}] | {'yes' if r['within_spread'] else 'no'} |"  # type: ignore[attr-defined]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
