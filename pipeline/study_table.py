"""The study's tables and plot: per-seed rows summarised per study row (mean, spread over
seeds, paired difference from CE), as CSV, markdown and a shift plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipeline.io import atomic_path
from pipeline.metrics.seeds import paired_difference, spread
from pipeline.plots import write_csv

BASELINE = "ce"
# Column order of the per-seed table; OOD and shift columns, which depend on the params, follow.
LEADING_COLUMNS = (
    "loss",
    "seed",
    "accuracy",
    "ece",
    "ece_ci95_low",
    "ece_ci95_high",
    "adaptive_ece",
    "classwise_ece",
    "nll",
    "brier",
    "ece_ts",
    "temperature",
    "raw_above_mixed",
    "kendall_tau",
    "rank_grad_share",
)
# Differences from the baseline worth an interval: accuracy, calibration, OOD detection.
PAIRED = ("accuracy", "ece", "ece_ts")
# The one text column of a row: where it trained (pipeline.training.device_name).
DEVICE = "device"


def table_columns(row: dict[str, Any]) -> list[str]:
    """The per-seed table's columns for ``row``: fixed ones (those present), AUROC per OOD
    set, shift by severity, time.

    Rows read back from JSON come with sorted keys, so the order is set here, not by the row.
    """
    leading = [k for k in LEADING_COLUMNS if k in row]
    auroc = sorted(k for k in row if k.startswith("auroc_"))
    shift = sorted(
        (k for k in row if k.startswith("shift_")),
        key=lambda k: (int(k.rsplit("_s", 1)[1]), not k.startswith("shift_ece")),
    )
    rest = [k for k in row if k not in (*leading, *auroc, *shift, "train_seconds", DEVICE)]
    device = [DEVICE] if DEVICE in row else []
    return [*leading, *auroc, *shift, *sorted(rest), "train_seconds", *device]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per study row, in the order rows first appear.

    Each metric becomes its mean over seeds and ``<metric>_std`` (sample std; NaN for one seed);
    the ECE's bootstrap bounds become the mean of each seed's bounds (the test set's sampling
    noise, which seeds do not average away). Rows other than CE gain ``d_<metric>`` with
    ``_low``/``_high``: the mean seed-by-seed difference from CE and its 95% t interval, over
    the seeds both have, for accuracy, ECE before and after scaling, and each OOD AUROC.
    Where rows say where they trained, ``devices`` lists the machines of a row's seeds and
    ``pairs_across_devices`` counts the seeds whose CE row trained elsewhere: those
    differences include the two processors' numerics as well as the losses'.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["loss"], []).append(row)
    baseline = {r["seed"]: r for r in groups.get(BASELINE, [])}
    summaries = []
    for name, group in groups.items():
        group = sorted(group, key=lambda r: r["seed"])
        out: dict[str, Any] = {"loss": name, "seeds": len(group)}
        for column in table_columns(group[0])[2:]:
            if column == DEVICE:
                continue
            values = spread([r[column] for r in group])
            out[column] = values.mean
            if not column.startswith("ece_ci95"):
                out[f"{column}_std"] = values.std
        paired = [r for r in group if r["seed"] in baseline]
        if any(DEVICE in r for r in group):
            out["devices"] = "; ".join(dict.fromkeys(r.get(DEVICE, "unknown") for r in group))
        if name != BASELINE and paired:
            if any(DEVICE in r for r in paired):
                out["pairs_across_devices"] = sum(
                    r.get(DEVICE) != baseline[r["seed"]].get(DEVICE) for r in paired
                )
            auroc = [k for k in group[0] if k.startswith("auroc_")]
            for column in (*PAIRED, *sorted(auroc)):
                diff = paired_difference(
                    [r[column] for r in paired], [baseline[r["seed"]][column] for r in paired]
                )
                out[f"d_{column}"] = diff.mean
                out[f"d_{column}_low"], out[f"d_{column}_high"] = diff.low, diff.high
        summaries.append(out)
    return summaries


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """``results.csv`` (summaries), ``results_seeds.csv`` (every seed) and ``results.md``.

    Returns:
        The summaries (see :func:`summarise`).
    """
    header = table_columns(
        {k: None for r in rows for k in r}
    )  # rows may lack a column (CE's share)
    write_csv(
        out_dir / "results_seeds.csv",
        header,
        [[_fmt(r.get(k, math.nan)) for k in header] for r in rows],
    )
    summaries = summarise(rows)
    columns = list(dict.fromkeys(k for s in summaries for k in s))
    write_csv(
        out_dir / "results.csv",
        columns,
        [[_fmt(s.get(k, math.nan)) for k in columns] for s in summaries],
    )
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(markdown(summaries))
    return summaries


def markdown(summaries: list[dict[str, Any]]) -> str:
    """The README's table: mean ± std over seeds, the ECE's test-set interval, and the paired
    differences from CE with their 95% intervals (bold where the interval excludes zero)."""
    auroc = sorted(k for k in summaries[0] if k.startswith("auroc_") and not k.endswith("_std"))
    cells = [
        ("accuracy", "accuracy"),
        ("ece", "ECE"),
        ("ece_ts", "ECE after TS"),
        ("raw_above_mixed", "raw > mixed %"),
        ("kendall_tau", "Kendall τ"),
        ("rank_grad_share", "rank share of gradient"),
        *((k, f"AUROC {k.removeprefix('auroc_')}") for k in auroc),
    ]
    cells = [(k, title) for k, title in cells if any(k in s for s in summaries)]
    diffs = [("accuracy", "Δ accuracy"), ("ece", "Δ ECE"), ("ece_ts", "Δ ECE after TS")]
    header = ["loss", "seeds", *(t for _, t in cells), "ECE test 95% CI"]
    header += [f"{t} vs CE [95% CI]" for _, t in diffs] + ["train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        row = [s["loss"], str(s["seeds"])]
        row += [_mean_std(s[k], s.get(f"{k}_std", math.nan)) if k in s else "" for k, _ in cells]
        ci = ("ece_ci95_low", "ece_ci95_high")
        row.append(f"[{s[ci[0]]:.2f}, {s[ci[1]]:.2f}]" if ci[0] in s else "")
        row += [_difference(s, k) for k, _ in diffs]
        row.append(f"{s['train_seconds']:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    devices = list(dict.fromkeys(d for s in summaries for d in s.get("devices", "").split("; ")))
    devices = [d for d in devices if d]
    if devices:
        lines += ["", f"Trained on: {'; '.join(devices)}."]
    across = [
        f"{s['loss']} ({s['pairs_across_devices']})"
        for s in summaries
        if s.get("pairs_across_devices")
    ]
    if across:
        lines.append(
            "Seeds paired with a CE row trained on another machine (their differences include "
            f"the processors' numerics): {', '.join(across)}."
        )
    return "\n".join(lines) + "\n"


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _difference(summary: dict[str, Any], column: str) -> str:
    key = f"d_{column}"
    if key not in summary:
        return ""
    mean, low, high = summary[key], summary[f"{key}_low"], summary[f"{key}_high"]
    if math.isnan(low):
        return f"{mean:+.2f}"
    text = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def plot_shift(summaries: list[dict[str, Any]], path: Path) -> None:
    """ECE and accuracy-estimation error against corruption severity, one line per study row
    (mean over seeds, the bars one standard deviation where there are several)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in summaries:
        levels = sorted(
            int(k.rsplit("s", 1)[1])
            for k in s
            if k.startswith("shift_ece_s") and not k.endswith("_std")
        )
        for ax, prefix in zip(axes, ("shift_ece_s", "shift_est_err_s"), strict=True):
            means = [s[f"{prefix}{lv}"] for lv in levels]
            stds = [s.get(f"{prefix}{lv}_std", math.nan) for lv in levels]
            errors = None if any(math.isnan(v) for v in stds) else stds
            ax.errorbar(levels, means, yerr=errors, marker="o", capsize=3, label=s["loss"])
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
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 3)
    return value
