"""How much of a mixing-trained model's miscalibration is its BatchNorm statistics?

RankMixup's step forwards the raw batch and then its mixed copies, both in train mode (as the
official code does), so each BatchNorm layer's running mean and variance, which the network
uses at test time, are an average over raw *and* mixed batches. Mixed images have other
statistics than raw ones (a blend of two images has less contrast), so at test time raw images
are normalised with statistics they did not produce. Plain mixup trains on mixed images only.

For each trained study model (``<runs>/<row>-s<seed>/best.pt``) this recomputes every running
statistic from the raw training images alone (``pipeline.bn_statistics``, what
``train.bn_statistics`` runs after training, over the study's own training split, without
augmentation), changes no weight, and
reports test accuracy, ECE, the temperature fitted on validation and ECE after scaling, before
and after. A model whose confidence is off only because of the mixed statistics comes back
calibrated; a CE model barely moves (its statistics came from raw, if augmented, images).

``--stats mixed`` asks the opposite question: it recomputes the statistics from raw batches
each followed by its mixed copies (the study's ``paper`` alpha and N, as an M-NDCG step forwards
them), so a CE model gets the statistics a ranking loss's training would have given it, with
no training. ``--seeds-csv`` also runs the pipeline's whole evaluation (shift included) on the
recomputed models and writes study rows named ``<row>_<stats>bn`` in the study's per-seed
format, for ``bench/compare_studies.py`` against the study's own ``results_seeds.csv``.

Runs without a row file (``--done``, default ``rows/`` beside ``--runs``) are still training
and are left out. Usage:
    python bench/bn_stats.py --params presets/study_paper.yaml --runs study/paper/runs
        [--rows ce mrl ...] [--csv out.csv] [--stats mixed] [--seeds-csv rows.csv]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pipeline.bn_statistics import Mixing, has_batchnorm, recompute_bn
from pipeline.calibration import fit_temperature, softmax
from pipeline.checkpoint import load_model
from pipeline.config import EvaluateConfig, load_section, read_params
from pipeline.data import PreparedData
from pipeline.evaluation import evaluate
from pipeline.inference import predict_logits
from pipeline.metrics.calibration import accuracy, expected_calibration_error
from pipeline.metrics.seeds import paired_difference
from pipeline.study import study_data_config, study_row
from pipeline.study_table import table_columns
from stages.download import add_source_args, prepare

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("accuracy", "ece", "temperature", "ece_ts")


def calibration_figures(model: nn.Module, data: PreparedData, batch_size: int) -> dict[str, float]:
    """Test accuracy and ECE (%), the validation-fitted temperature and test ECE after it."""
    val = data.train.images[data.val_idx], data.train.labels[data.val_idx]
    z_val = predict_logits(model, val[0], data.mean, data.std, batch_size)
    z_test = predict_logits(model, data.test.images, data.mean, data.std, batch_size)
    temperature = fit_temperature(z_val, val[1]).temperature
    labels = data.test.labels
    probs = softmax(z_test)
    return {
        "accuracy": 100 * accuracy(probs, labels),
        "ece": 100 * expected_calibration_error(probs, labels),
        "temperature": temperature,
        "ece_ts": 100 * expected_calibration_error(softmax(z_test, temperature), labels),
    }


def compare(
    run: Path, data: PreparedData, batch_size: int, mixing: Mixing | None = None
) -> tuple[dict[str, Any], nn.Module] | None:
    """Figures of ``run``'s best model before and after :func:`recompute_bn`, and the
    recomputed model (None: no BatchNorm). The ``_raw_bn`` keys hold the figures after, whichever
    images the statistics came from."""
    model, _ = load_model(run / "best.pt")
    if not has_batchnorm(model):
        return None
    before = calibration_figures(model, data, batch_size)
    fresh = recompute_bn(
        model,
        data.train.images,
        data.mean,
        data.std,
        batch_size,
        indices=data.train_idx,
        mixing=mixing,
    )
    after = calibration_figures(fresh, data, batch_size)
    row: dict[str, Any] = {"run": run.name}
    for key in COLUMNS:
        row[key], row[f"{key}_raw_bn"] = before[key], after[key]
    return row, fresh


def evaluated_row(
    model: nn.Module, run: str, suffix: str, data: PreparedData, cfg: EvaluateConfig
) -> dict[str, Any]:
    """The study row (``pipeline.study.study_row``) of ``model``, evaluated as the study
    evaluates, named after ``run`` (``<row>-s<seed>``) with ``suffix``; no training time."""
    name, seed = run.rsplit("-s", 1)
    return study_row(name + suffix, int(seed), evaluate(model, data, cfg).metrics, math.nan)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per study row (its seeds pooled): the mean of each figure before and after, and the
    seed-by-seed change after - before with its 95% t interval (NaN bounds for one seed)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["run"].rsplit("-s", 1)[0], []).append(row)
    out = []
    for name, seeds in by_name.items():
        summary: dict[str, Any] = {"row": name, "seeds": len(seeds)}
        for key in COLUMNS:
            before = [r[key] for r in seeds]
            after = [r[f"{key}_raw_bn"] for r in seeds]
            change = paired_difference(after, before)
            summary[key] = float(np.mean(before))
            summary[f"{key}_raw_bn"] = float(np.mean(after))
            summary[f"{key}_change"] = change.mean
            summary[f"{key}_change_low"], summary[f"{key}_change_high"] = change.low, change.high
        out.append(summary)
    return out


def _change_cell(summary: dict[str, Any], key: str) -> str:
    low, high = summary[f"{key}_change_low"], summary[f"{key}_change_high"]
    interval = "" if np.isnan(low) else f" [{low:+.2f}, {high:+.2f}]"
    before, after = summary[key], summary[f"{key}_raw_bn"]
    return f"{before:.2f} → {after:.2f} ({summary[f'{key}_change']:+.2f}{interval})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(p)
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the study's params")
    p.add_argument("--runs", type=Path, default=ROOT / "study" / "runs")
    p.add_argument("--rows", nargs="+", help="study rows (default: every one under --runs)")
    p.add_argument(
        "--done",
        type=Path,
        help="the study's row files (default: rows/ beside --runs): runs without one are "
        "still training and are left out",
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--csv", type=Path, help="also write the figures here")
    p.add_argument(
        "--stats",
        choices=["raw", "mixed"],
        default="raw",
        help="recompute from raw training images, or from raw batches each followed by its "
        "mixed copies (study.paper's alpha and num_mixes)",
    )
    p.add_argument(
        "--seeds-csv",
        type=Path,
        help="also evaluate the recomputed models fully (shift included) and write their study "
        "rows, named <row>_<stats>bn, here",
    )
    args = p.parse_args(argv)
    params = read_params(args.params)
    study = load_section(params, "study")
    done = args.done or args.runs.parent / "rows"
    runs = sorted(
        d
        for d in args.runs.iterdir()
        if (d / "best.pt").is_file() and (done / f"{d.name}.json").is_file()
    )
    if args.rows:
        runs = [d for d in runs if d.name.rsplit("-s", 1)[0] in args.rows]
    if not runs:
        raise SystemExit(f"no trained study models under {args.runs}: run the study first")
    # The study's own split (the models' training images); no OOD sets: they are not used.
    data_cfg = dataclasses.replace(study_data_config(load_section(params, "data"), study), ood=[])
    data = prepare(data_cfg, args, max_train=study.max_train)
    mixing = Mixing(study.paper.alpha, study.paper.num_mixes) if args.stats == "mixed" else None
    eval_cfg = load_section(params, "evaluate")
    rows, study_rows = [], []
    print("| run | accuracy % | ECE % | temperature | ECE after TS % |")
    print("| --- | --- | --- | --- | --- |")
    for run in runs:
        compared = compare(run, data, args.batch_size, mixing)
        if compared is None:
            print(f"{run.name}: no BatchNorm, left out", file=sys.stderr)
            continue
        row, fresh = compared
        rows.append(row)
        if args.seeds_csv:
            study_rows.append(evaluated_row(fresh, run.name, f"_{args.stats}bn", data, eval_cfg))
        cells = [f"{row[k]:.2f} → {row[f'{k}_raw_bn']:.2f}" for k in COLUMNS]
        print(f"| {run.name} | {' | '.join(cells)} |", flush=True)
    if not rows:
        return 0
    print("\nPer row, mean over seeds: before → after (change, 95% interval over seeds)")
    print("| row | seeds | accuracy % | ECE % | temperature | ECE after TS % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for summary in summarise(rows):
        cells = " | ".join(_change_cell(summary, k) for k in COLUMNS)
        print(f"| {summary['row']} | {summary['seeds']} | {cells} |")
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.seeds_csv:
        with args.seeds_csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=table_columns(study_rows[0]))
            writer.writeheader()
            writer.writerows(study_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
