"""Search RankMixup settings on the study regime, selecting on the VALIDATION split only.

Each candidate trains like a study row (``params.yaml``'s ``study`` section) and is scored by
the best checkpoint's validation ECE, among candidates whose validation accuracy is within
``--max-acc-drop`` points of cross-entropy's. The test split is never looked at.

Usage: python bench/tune_rankmixup.py [--out docs/tuning.csv]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root, for bench.*
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pick_settings import Candidate, accuracy_floor, pick
from pipeline.config import load_section, read_params
from pipeline.data import load_checksums, prepare_data
from pipeline.study import study_data_config, study_train_config
from pipeline.training import train

# (name, loss overrides): the paper's defaults first, then the knobs the paper names
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("ce", {"name": "ce"}),
    ("mrl w0.1 m2", {"name": "mrl"}),
    (
        "mrl w0.5 m1 per_sample",
        {"name": "mrl", "weight": 0.5, "margin": 1.0, "mrl_mask": "per_sample"},
    ),
    (
        "mrl w1.0 m1 per_sample",
        {"name": "mrl", "weight": 1.0, "margin": 1.0, "mrl_mask": "per_sample"},
    ),
    ("mrl w1.0 m2 per_sample", {"name": "mrl", "weight": 1.0, "mrl_mask": "per_sample"}),
    ("mndcg w0.1 a2 N3", {"name": "mndcg"}),
    ("mndcg w1.0 a2 N3", {"name": "mndcg", "weight": 1.0}),
    ("mndcg w2.0 a2 N3", {"name": "mndcg", "weight": 2.0}),
    ("mndcg w1.0 a1 N3", {"name": "mndcg", "weight": 1.0, "alpha": 1.0}),
    ("mndcg w1.0 a2 N2", {"name": "mndcg", "weight": 1.0, "num_mixes": 2}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", type=Path, default=Path("docs/tuning.csv"))
    p.add_argument("--work", type=Path, default=Path("study/tuning"))
    p.add_argument("--max-acc-drop", type=float, default=0.5, help="points of val accuracy")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = read_params(args.params)
    data_cfg, model_cfg, loss_cfg, train_cfg, study = (
        load_section(params, s) for s in ("data", "model", "loss", "train", "study")
    )
    data = prepare_data(
        dataclasses.replace(study_data_config(data_cfg, study), ood=[]),
        Path("data/raw"),
        max_train=study.max_train,
        system_dir=Path("/usr/share/datasets/fashion-mnist"),
        checksums={"fashion_mnist": load_checksums(Path("checksums/fashion-mnist.sha256"))},
    )
    train_cfg = study_train_config(train_cfg, study, train_cfg.seed)
    rows = []
    for name, overrides in CANDIDATES:
        started = time.perf_counter()
        loss = dataclasses.replace(loss_cfg, **overrides)
        result = train(data, model_cfg, loss, train_cfg, args.work / name.replace(" ", "_"))
        best = result.history[result.best_epoch - 1]
        keys = ("name", "weight", "margin", "alpha", "num_mixes", "mrl_mask")
        settings = {k: getattr(loss, k) for k in keys}
        rows.append(
            {
                "candidate": name,
                **settings,
                "val_accuracy": round(100 * best["val_accuracy"], 2),
                "val_ece": round(100 * best["val_ece"], 3),
                "seconds": round(time.perf_counter() - started),
            }
        )
        print(rows[-1], flush=True)
    candidates = [
        Candidate(
            name=r["candidate"],
            loss=r["name"],
            settings={},
            val_accuracy=r["val_accuracy"],
            val_ece=r["val_ece"],
        )
        for r in rows
    ]
    floor = accuracy_floor(candidates, args.max_acc_drop)
    for family, chosen in pick(candidates, args.max_acc_drop).items():
        if chosen is None:
            print(f"{family}: no candidate within {args.max_acc_drop} points of CE's accuracy")
        else:
            print(
                f"{family}: pick {chosen.name} (val ECE {chosen.val_ece}, "
                f"val acc {chosen.val_accuracy} >= {floor:.2f})"
            )
    keys = [
        "candidate",
        "name",
        "weight",
        "margin",
        "alpha",
        "num_mixes",
        "mrl_mask",
        "val_accuracy",
        "val_ece",
        "seconds",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
