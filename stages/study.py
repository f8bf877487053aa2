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
from pipeline.data import DataError
from pipeline.study import StudyRun, plot_shift, run_study, write_table
from stages.common import parser, setup
from stages.download import add_source_args, prepare


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_source_args(p)
    p.add_argument("--out", type=Path, default=Path("study"))
    p.add_argument("--work", type=Path, default=Path("study/runs"))
    args = p.parse_args(argv)
    try:
        params = setup(args)
        data_cfg, model_cfg, loss_cfg, train_cfg, eval_cfg, study = (
            load_section(params, s) for s in ("data", "model", "loss", "train", "evaluate", "study")
        )
        data = prepare(data_cfg, args, max_train=study.max_train)
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
    runs += [
        StudyRun(
            t.name,
            dataclasses.replace(
                loss_cfg,
                name=t.loss,
                weight=t.weight,
                margin=t.margin,
                alpha=t.alpha,
                num_mixes=t.num_mixes,
                mrl_mask=t.mrl_mask,
            ),
        )
        for t in study.tuned
    ]
    rows = run_study(data, runs, model_cfg, train_cfg, eval_cfg, args.work)
    write_table(rows, args.out / "results.csv", args.out / "results.md")
    plot_shift(rows, args.out / "shift.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
