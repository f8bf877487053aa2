"""`make study`: compare every loss on the same data, model, epochs and seed.

Reads all params sections; the ``study`` section sets the regime (training pool, epochs,
augmentation, losses). Writes ``--out``/results.csv (committed), results.md and shift.png;
checkpoints go under ``--work`` so a killed study resumes.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from pipeline.config import ConfigError, load_section
from pipeline.data import DataError, load_checksums, prepare_data
from pipeline.study import StudyRun, plot_shift, run_study, write_table
from stages.common import parser, setup
from stages.download import SYSTEM_FASHION_MNIST


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--raw", type=Path, default=Path("data/raw"))
    p.add_argument("--out", type=Path, default=Path("study"))
    p.add_argument("--work", type=Path, default=Path("study/runs"))
    p.add_argument("--checksums", type=Path, default=Path("checksums/fashion-mnist.sha256"))
    args = p.parse_args(argv)
    try:
        params = setup(args)
        data_cfg, model_cfg, loss_cfg, train_cfg, eval_cfg, study = (
            load_section(params, s) for s in ("data", "model", "loss", "train", "evaluate", "study")
        )
        data = prepare_data(
            data_cfg.dataset,
            args.raw,
            val_fraction=data_cfg.val_fraction,
            seed=data_cfg.seed,
            ood_names=data_cfg.ood,
            max_train=study.max_train,
            max_test=data_cfg.max_test,
            system_dir=SYSTEM_FASHION_MNIST,
            checksums={"fashion_mnist": load_checksums(args.checksums)},
        )
    except (ConfigError, DataError) as err:
        print(f"study: {err}", file=sys.stderr)
        return 2
    train_cfg = dataclasses.replace(
        train_cfg,
        epochs=study.epochs,
        augment=study.augment,
        milestones=[m for m in train_cfg.milestones if m < study.epochs],
    )
    runs = [StudyRun(name, dataclasses.replace(loss_cfg, name=name)) for name in study.losses]
    rows = run_study(data, runs, model_cfg, train_cfg, eval_cfg, args.work)
    write_table(rows, args.out / "results.csv", args.out / "results.md")
    plot_shift(rows, args.out / "shift.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
