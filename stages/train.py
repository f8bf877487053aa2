"""DVC stage `train`: train a classifier on the prepared data; resumable from its checkpoint.

Reads the ``model``, ``loss`` and ``train`` params sections; writes the best checkpoint,
the resume checkpoints, training metrics and dvclive's per-epoch plots.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from dvclive import Live
from pipeline.config import ConfigError, load_section
from pipeline.data import DataError, load_prepared
from pipeline.io import atomic_path, write_json
from pipeline.training import select_device, train
from stages.common import parser, setup


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--checkpoints", type=Path, default=Path("models/checkpoints"))
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--metrics", type=Path, default=Path("metrics/train.json"))
    p.add_argument("--live", type=Path, default=Path("dvclive/train"))
    args = p.parse_args(argv)
    try:
        params = setup(args)
        model_cfg, loss_cfg, train_cfg = (
            load_section(params, s) for s in ("model", "loss", "train")
        )
        select_device(train_cfg.device)  # one line, not a traceback, when no GPU is there
        # Mapped, not read: a training split larger than memory is read batch by batch.
        data = load_prepared(args.data, mmap=True)
    except (ConfigError, DataError) as err:
        print(f"train: {err}", file=sys.stderr)
        return 2

    # dvcyaml=False: the pipeline's dvc.yaml owns the metrics and plots entries.
    with Live(str(args.live), dvcyaml=False, save_dvc_exp=False) as live:

        def log_epoch(epoch: int, row: dict[str, float]) -> None:
            live.step = epoch
            for key, value in row.items():
                if key != "epoch":
                    live.log_metric(key, value)
            live.make_summary()

        result = train(data, model_cfg, loss_cfg, train_cfg, args.checkpoints, log_epoch=log_epoch)
    with atomic_path(args.model) as tmp:
        shutil.copyfile(args.checkpoints / "best.pt", tmp)
    summary = dataclasses.asdict(result)
    summary["final"] = summary.pop("history")[-1]
    write_json(args.metrics, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
