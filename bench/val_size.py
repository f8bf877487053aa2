"""How large must the validation split be for temperature scaling to help, not hurt by noise?

For each trained study model (``study/runs/<row>-s<seed>/best.pt``), the 10,000 test images
are split once into a fitting pool and a held-out half. For each size n, ``--draws`` random
subsets of n images from the pool fit a temperature by NLL (as evaluation does); the held-out
half measures the ECE at that temperature. Reported per size, over every model and draw: the
mean held-out ECE after scaling, its spread over draws, how often scaling made ECE worse than
no scaling, and the spread of the fitted T. The test set stands in for a larger validation
split here only to measure this; the pipeline never fits on it.

Usage: python bench/val_size.py [--rows ce mndcg ...] [--sizes 250 500 1000 2000 5000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.calibration import fit_temperature_nll, softmax
from pipeline.checkpoint import load_model
from pipeline.data import load_prepared
from pipeline.inference import predict_logits
from pipeline.metrics.calibration import expected_calibration_error

ROOT = Path(__file__).resolve().parents[1]


def held_out_eces(
    logits: np.ndarray, labels: np.ndarray, sizes: list[int], draws: int, seed: int
) -> dict[int, dict[str, np.ndarray]]:
    """Per size: held-out ECE after scaling, the unscaled ECE, and T, for each draw."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    pool, held = order[: len(order) // 2], order[len(order) // 2 :]
    unscaled = expected_calibration_error(softmax(logits[held]), labels[held])
    out = {}
    for n in sizes:
        eces, temps = [], []
        for _ in range(draws):
            pick = rng.choice(pool, size=n, replace=False)
            t = fit_temperature_nll(logits[pick], labels[pick])
            temps.append(t)
            eces.append(expected_calibration_error(softmax(logits[held], t), labels[held]))
        out[n] = {"ece": np.array(eces), "unscaled": np.full(draws, unscaled), "t": np.array(temps)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=ROOT / "study" / "runs")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    p.add_argument("--rows", nargs="+", help="study rows (default: every one under --runs)")
    p.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000, 5000])
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    data = load_prepared(args.data, mmap=True)
    images, labels = np.asarray(data.test.images), np.asarray(data.test.labels)
    runs = sorted(d for d in args.runs.iterdir() if (d / "best.pt").is_file())
    if args.rows:
        runs = [d for d in runs if d.name.rsplit("-s", 1)[0] in args.rows]
    if not runs:
        raise SystemExit(f"no trained study models under {args.runs}: run `make study` first")
    pooled: dict[int, dict[str, list[float]]] = {
        n: {"ece": [], "unscaled": [], "t": []} for n in args.sizes
    }
    for k, run in enumerate(runs):
        model, meta = load_model(run / "best.pt")
        logits = predict_logits(model, images, meta["mean"], meta["std"], batch_size=1000)
        for n, figures in held_out_eces(logits, labels, args.sizes, args.draws, seed=k).items():
            for key, values in figures.items():
                pooled[n][key].extend(values.tolist())
        print(f"{run.name}: done", file=sys.stderr, flush=True)
    held = len(labels) - len(labels) // 2
    print(f"{len(runs)} models x {args.draws} draws per size; ECE in percent, {held:,} held out")
    print(
        "| validation images | ECE after scaling | spread over draws | scaling made it worse |",
        end="",
    )
    print(" T spread |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for n in args.sizes:
        ece, unscaled, t = (np.array(pooled[n][k]) for k in ("ece", "unscaled", "t"))
        # spread over draws: per model, the std of its draws, averaged over models
        per_model = (100 * ece).reshape(len(runs), args.draws)
        temps = t.reshape(len(runs), args.draws)
        row = {
            "size": n,
            "ece": float(100 * ece.mean()),
            "unscaled": float(100 * unscaled.mean()),
            "draw_std": float(per_model.std(axis=1, ddof=1).mean()),
            "worse_share": float((ece > unscaled).mean()),
            "t_std": float(temps.std(axis=1, ddof=1).mean()),
        }
        rows.append(row)
        print(
            f"| {n:,} | {row['ece']:.2f} | {row['draw_std']:.2f} | "
            f"{100 * row['worse_share']:.0f}% | {row['t_std']:.3f} |"
        )
    print(f"unscaled ECE on the held-out half: {rows[0]['unscaled']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
