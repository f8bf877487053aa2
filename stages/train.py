"""DVC stage `train`: train a classifier on the prepared data; resumable from its checkpoint.

Reads the ``model``, ``loss`` and ``train`` params sections; writes the best checkpoint,
the resume checkpoints, training metrics and dvclive's per-epoch plots. With
``train.nproc_per_node`` above 1 it starts itself again under torchrun, once per process;
started by torchrun (by itself or by hand, on several machines), it trains as one rank of the
group, and only rank 0 writes.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from dvclive import Live
from pipeline.config import ConfigError, LossConfig, ModelConfig, TrainConfig, load_section
from pipeline.data import DataError, PreparedData, load_prepared
from pipeline.distributed import Ranks, die_with_parent, process_group, torchrun_command
from pipeline.io import atomic_path, write_json
from pipeline.models import PretrainedWeightsError, WeightsError
from pipeline.training import DivergedError, TrainResult, select_device, train
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
        device = select_device(train_cfg.device)  # one line, not a traceback, without a GPU
        warn_untracked_weights(model_cfg.weights)
        ranks = Ranks.from_env(os.environ)
        if train_cfg.nproc_per_node > 1 and not ranks.launched:
            command = torchrun_command(
                train_cfg.nproc_per_node,
                device,
                "stages.train",
                sys.argv[1:] if argv is None else argv,
                os.environ,
            )
            print(f"train: {' '.join(command[1:])}", file=sys.stderr, flush=True)
            stop = functools.partial(die_with_parent, signal.SIGTERM)
            return subprocess.run(command, check=False, preexec_fn=stop).returncode
        # Mapped, not read: a training split larger than memory is read batch by batch.
        data = load_prepared(args.data, mmap=True)
    except (ConfigError, DataError, ValueError) as err:
        print(f"train: {err}", file=sys.stderr)
        return 2

    if ranks.launched:
        die_with_parent(signal.SIGKILL)
    try:
        with process_group(ranks, ranks.device(device)):
            if not ranks.is_main:
                train(data, model_cfg, loss_cfg, train_cfg, args.checkpoints, ranks=ranks)
                return 0
            result = train_and_log(data, model_cfg, loss_cfg, train_cfg, args, ranks)
    # a batch too small for the processes; NaN; weights that cannot be fetched or do not fit
    except (ConfigError, DivergedError, PretrainedWeightsError, WeightsError) as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    with atomic_path(args.model) as tmp:
        shutil.copyfile(args.checkpoints / "best.pt", tmp)
    write_json(args.metrics, train_metrics(result))
    return 0


# dvc.yaml's train stage depends on this folder: the weights files DVC sees change.
WEIGHTS_DIR = Path("weights")


def warn_untracked_weights(weights: str | None) -> None:
    """Say when ``model.weights`` lies outside :data:`WEIGHTS_DIR`, where DVC does not look."""
    if weights is None:
        return
    inside = Path(weights).resolve().is_relative_to(WEIGHTS_DIR.resolve())
    if not inside:
        print(
            f"train: model.weights {weights} is outside {WEIGHTS_DIR}/, which dvc.yaml tracks: "
            f"`dvc repro` will not rerun training when that file changes (copy it into "
            f"{WEIGHTS_DIR}/ to have it tracked)",
            file=sys.stderr,
        )


def train_and_log(
    data: PreparedData,
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    train_cfg: TrainConfig,
    args: argparse.Namespace,
    ranks: Ranks,
) -> TrainResult:
    """Train as rank 0 (or alone), logging every epoch with dvclive."""
    # dvcyaml=False: the pipeline's dvc.yaml owns the metrics and plots entries.
    with Live(str(args.live), dvcyaml=False, save_dvc_exp=False) as live:

        def log_epoch(epoch: int, row: dict[str, float]) -> None:
            live.step = epoch
            for key, value in in_percent(row).items():
                if key != "epoch":
                    live.log_metric(key, value)
            live.make_summary()

        return train(
            data, model_cfg, loss_cfg, train_cfg, args.checkpoints, log_epoch=log_epoch, ranks=ranks
        )


# Fractions in the training library; percent in what DVC shows, as in metrics/eval.json.
_PERCENT_KEYS = ("best_val_accuracy", "val_accuracy", "val_ece")


def in_percent(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its accuracy and ECE fractions as percent."""
    return {k: 100 * v if k in _PERCENT_KEYS else v for k, v in row.items()}


def train_metrics(result: TrainResult) -> dict[str, Any]:
    """What ``dvc metrics show`` compares of a training run, flat and in percent: the best and
    the last epoch's validation accuracy, the last epoch's validation ECE and training loss,
    epochs run, the epoch a killed run resumed from (0: none) and seconds across resumes."""
    last = in_percent(result.history[-1])
    return {
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": 100 * result.best_val_accuracy,
        "val_accuracy": last["val_accuracy"],
        "val_ece": last["val_ece"],
        "train_loss": last["train_loss"],
        "resumed_from_epoch": result.resumed_from_epoch,
        "seconds": result.seconds,
    }


if __name__ == "__main__":
    sys.exit(main())
