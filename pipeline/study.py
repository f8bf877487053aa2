"""The loss comparison study: train and evaluate each objective on the same data, model and
epochs, over several seeds, and tabulate calibration, OOD, shift and ranking figures side by
side: per row the mean and spread over seeds, and the seed-by-seed (paired) difference from CE
with its interval.

The seed drives the initialisation, the batch order and the mixing; the split of the data is
``data.seed``'s and stays the same for every seed, so the rows differ only in what they train.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checkpoint import load_model
from pipeline.config import (
    DataConfig,
    EvaluateConfig,
    LossConfig,
    ModelConfig,
    RankingSettings,
    StudyConfig,
    TrainConfig,
)
from pipeline.data.prepared import PreparedData
from pipeline.evaluation import evaluate
from pipeline.training import device_name, select_device, train

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One row of the study: a name and the ``loss`` section it trains with."""

    name: str
    loss: LossConfig


def study_runs(loss_cfg: LossConfig, study: StudyConfig) -> list[StudyRun]:
    """The study's rows in table order: each of ``study.losses``, then the tuned rows.

    Every row starts from the ``loss`` section and sets its objective and RankMixup settings:
    the plain rows ``study.paper``'s (the paper's), a tuned row its own. So rows differ in the
    objective alone, and changing the ``loss`` section's ranking settings (the pipeline's
    defaults) leaves every row as it was; its mixing, smoothing and focal settings still apply
    (:data:`INHERITED_LOSS_KEYS`).
    """
    runs = [StudyRun(name, _with_settings(loss_cfg, name, study.paper)) for name in study.losses]
    runs += [StudyRun(t.name, _with_settings(loss_cfg, t.loss, t)) for t in study.tuned]
    return runs


def _with_settings(loss_cfg: LossConfig, name: str, settings: RankingSettings) -> LossConfig:
    chosen = {f.name: getattr(settings, f.name) for f in dataclasses.fields(RankingSettings)}
    return dataclasses.replace(loss_cfg, name=name, **chosen)


# The ``loss`` keys a study row takes from the pipeline's section: all but the objective and the
# RankMixup settings. The study's DVC stages depend on these alone (tests/test_study.py).
INHERITED_LOSS_KEYS = tuple(
    f.name
    for f in dataclasses.fields(LossConfig)
    if f.name != "name" and f.name not in {g.name for g in dataclasses.fields(RankingSettings)}
)


def study_data_config(data_cfg: DataConfig, study: StudyConfig) -> DataConfig:
    """The ``data`` section with the study's validation share (its pool is ``max_train``)."""
    return dataclasses.replace(data_cfg, val_fraction=study.val_fraction)


def study_train_config(train_cfg: TrainConfig, study: StudyConfig, seed: int) -> TrainConfig:
    """The ``train`` section with the study's epochs and augmentation, and ``seed``."""
    return dataclasses.replace(
        train_cfg,
        seed=seed,
        epochs=study.epochs,
        augment=study.augment,
        milestones=[m for m in train_cfg.milestones if m < study.epochs],
    )


def run_row(
    data: PreparedData,
    run: StudyRun,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    eval_cfg: EvaluateConfig,
    work_dir: Path,
) -> dict[str, Any]:
    """Train and evaluate one run; checkpoints under ``work_dir`` let a killed run resume."""
    logger.info("study: %s, seed %d", run.name, train_cfg.seed)
    result = train(data, model_cfg, run.loss, train_cfg, work_dir)
    model, _ = load_model(work_dir / "best.pt")
    ev = evaluate(model, data, eval_cfg)
    row = study_row(run.name, train_cfg.seed, ev.metrics, result.seconds)
    shares = [r["train_rank_grad_share"] for r in result.history if "train_rank_grad_share" in r]
    if shares:  # ranking losses: how much of the gradient the ranking term made, over training
        row["rank_grad_share"] = float(np.mean(shares))
    # The selected epoch's validation figures travel with the row, so a settings pick on
    # validation only (bench/pick_settings.py) needs the committed rows, not the checkpoints.
    selected = result.history[result.best_epoch - 1]
    row["val_accuracy"] = 100 * float(selected["val_accuracy"])
    row["val_ece"] = 100 * float(selected["val_ece"])
    # Rows of one study may run on different machines (and numerics differ between processors):
    # each says where it trained, and the table says when a comparison mixes them.
    row["device"] = device_name(select_device(train_cfg.device))
    return row


def run_study(
    data: PreparedData,
    runs: Sequence[StudyRun],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    eval_cfg: EvaluateConfig,
    work_dir: Path,
    seeds: Sequence[int] = (0,),
) -> list[dict[str, Any]]:
    """Run every row with every seed in turn (``work_dir / row_id(...)`` each)."""
    return [
        run_row(
            data,
            run,
            model_cfg,
            dataclasses.replace(train_cfg, seed=seed),
            eval_cfg,
            work_dir / row_id(run.name, seed),
        )
        for run in runs
        for seed in seeds
    ]


def row_id(name: str, seed: int) -> str:
    """The file and folder name of row ``name`` trained with ``seed``."""
    return f"{name}-s{seed}"


def study_row(name: str, seed: int, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Flatten one evaluation (one row, one seed) into the study's columns."""
    raw, scaled = metrics["test"]["raw"], metrics["test"]["scaled"]
    row: dict[str, Any] = {"loss": name, "seed": seed}
    for key in ("accuracy", "ece", "adaptive_ece", "classwise_ece", "nll", "brier"):
        row[key] = raw[key]
    if "ece_ci95" in raw:  # the test set's bootstrap interval of this seed's ECE
        row["ece_ci95_low"], row["ece_ci95_high"] = raw["ece_ci95"]
    row["ece_ts"] = scaled["ece"]
    if "ranking" in metrics:  # the paper's hypothesis, measured (pipeline.ranking_check)
        row["raw_above_mixed"] = metrics["ranking"]["raw_above_mixed"]
        row["kendall_tau"] = metrics["ranking"]["kendall_tau"]
    row["temperature"] = metrics["temperature"]["temperature"]
    for ood_name, report in metrics["ood"].items():
        row[f"auroc_{ood_name}"] = report["raw"]["msp"]["auroc"]
    severities = _shift_by_severity(metrics["shift"])
    for level, (ece, err) in severities.items():
        row[f"shift_ece_s{level}"] = ece
        row[f"shift_est_err_s{level}"] = err
    row["train_seconds"] = seconds
    return row


def _shift_by_severity(shift: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Mean ECE and mean |estimated − true accuracy| over corruptions, per severity."""
    per_level: dict[str, list[tuple[float, float]]] = {}
    for name, levels in shift.items():
        if name == "clean":
            continue
        for level, r in levels.items():
            per_level.setdefault(level, []).append((r["ece"], r["estimation_error"]))
    return {
        level: (float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals])))
        for level, vals in sorted(per_level.items(), key=lambda kv: int(kv[0]))
    }
