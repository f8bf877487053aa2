"""The loss comparison study: train and evaluate each objective on the same data, model,
epochs and seed, and tabulate calibration, OOD and shift figures side by side.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline.checkpoint import load_model
from pipeline.config import EvaluateConfig, LossConfig, ModelConfig, StudyConfig, TrainConfig
from pipeline.data.prepared import PreparedData
from pipeline.evaluation import evaluate
from pipeline.io import atomic_path
from pipeline.plots import write_csv
from pipeline.training import train

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One row of the study: a name and the ``loss`` section it trains with."""

    name: str
    loss: LossConfig


def study_runs(loss_cfg: LossConfig, study: StudyConfig) -> list[StudyRun]:
    """The study's rows in table order: each of ``study.losses``, then the tuned rows.

    Every row inherits the ``loss`` section and changes only what its name or tuned entry sets,
    so rows differ in the objective alone.
    """
    runs = [StudyRun(name, dataclasses.replace(loss_cfg, name=name)) for name in study.losses]
    for t in study.tuned:
        tuned = dataclasses.replace(
            loss_cfg,
            name=t.loss,
            weight=t.weight,
            margin=t.margin,
            alpha=t.alpha,
            num_mixes=t.num_mixes,
            mrl_mask=t.mrl_mask,
        )
        runs.append(StudyRun(t.name, tuned))
    return runs


def study_train_config(train_cfg: TrainConfig, study: StudyConfig) -> TrainConfig:
    """The ``train`` section with the study's epochs and augmentation."""
    return dataclasses.replace(
        train_cfg,
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
    logger.info("study: %s", run.name)
    result = train(data, model_cfg, run.loss, train_cfg, work_dir)
    model, _ = load_model(work_dir / "best.pt")
    ev = evaluate(model, data, eval_cfg)
    return study_row(run.name, ev.metrics, result.seconds)


def run_study(
    data: PreparedData,
    runs: Sequence[StudyRun],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    eval_cfg: EvaluateConfig,
    work_dir: Path,
) -> list[dict[str, Any]]:
    """Run every row in turn (``work_dir / name`` per run); one row per run."""
    return [run_row(data, run, model_cfg, train_cfg, eval_cfg, work_dir / run.name) for run in runs]


def study_row(name: str, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Flatten one evaluation into the study's columns."""
    raw, scaled = metrics["test"]["raw"], metrics["test"]["scaled"]
    row: dict[str, Any] = {"loss": name}
    for key in ("accuracy", "ece", "adaptive_ece", "classwise_ece", "nll", "brier"):
        row[key] = raw[key]
    row["ece_ts"] = scaled["ece"]
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


# Column order of the table; OOD and shift columns, which depend on the params, follow these.
LEADING_COLUMNS = (
    "loss",
    "accuracy",
    "ece",
    "adaptive_ece",
    "classwise_ece",
    "nll",
    "brier",
    "ece_ts",
    "temperature",
)


def table_columns(row: dict[str, Any]) -> list[str]:
    """The table's columns for ``row``: fixed ones, AUROC per OOD set, shift by severity, time.

    Rows read back from JSON come with sorted keys, so the order is set here, not by the row.
    """
    auroc = sorted(k for k in row if k.startswith("auroc_"))
    shift = sorted(
        (k for k in row if k.startswith("shift_")),
        key=lambda k: (int(k.rsplit("_s", 1)[1]), not k.startswith("shift_ece")),
    )
    rest = [k for k in row if k not in (*LEADING_COLUMNS, *auroc, *shift, "train_seconds")]
    return [*LEADING_COLUMNS, *auroc, *shift, *sorted(rest), "train_seconds"]


def write_table(rows: list[dict[str, Any]], csv_path: Path, md_path: Path) -> None:
    """The study as CSV (one row per loss) and as a markdown table."""
    header = table_columns(rows[0])
    write_csv(csv_path, header, [[_fmt(r[k]) for k in header] for r in rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(_fmt(r[k])) for k in header) + " |" for r in rows]
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def plot_shift(rows: list[dict[str, Any]], path: Path) -> None:
    """ECE and accuracy-estimation error against corruption severity, one line per loss."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        levels = sorted(int(k.rsplit("s", 1)[1]) for k in row if k.startswith("shift_ece_s"))
        axes[0].plot(
            levels, [row[f"shift_ece_s{lv}"] for lv in levels], marker="o", label=row["loss"]
        )
        axes[1].plot(
            levels, [row[f"shift_est_err_s{lv}"] for lv in levels], marker="o", label=row["loss"]
        )
    axes[0].set_title("ECE under corruption (after scaling)")
    axes[1].set_title("|estimated - true accuracy|")
    for ax in axes:
        ax.set_xlabel("severity (mean over corruptions)")
        ax.set_ylabel("percent")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _fmt(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value
