"""Plot data for ``dvc plots`` (CSV files) and a reliability-diagram PNG for people.

References:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (reliability diagrams).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt
import numpy as np

from pipeline.calibration import softmax
from pipeline.io import atomic_path
from pipeline.metrics.calibration import (
    ReliabilityBins,
    expected_calibration_error,
    reliability_bins,
)
from pipeline.metrics.ood import max_softmax, roc_points


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """Atomically write a CSV file with a header row."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


# How each reliability row is labelled in the CSV, so the plots' legends say it in words.
CALIBRATION_LABELS = {"raw": "before scaling", "scaled": "temperature-scaled"}


def reliability_rows(bins: ReliabilityBins, calibration: str) -> list[list[object]]:
    """One row per non-empty bin: calibration label, centre, confidence, accuracy, gap, count."""
    rows = []
    for i in np.flatnonzero(bins.count):
        centre = (bins.lower[i] + bins.upper[i]) / 2
        gap = bins.confidence[i] - bins.accuracy[i]
        rows.append(
            [
                calibration,
                round(float(centre), 4),
                float(bins.confidence[i]),
                float(bins.accuracy[i]),
                float(gap),
                int(bins.count[i]),
            ]
        )
    return rows


def write_plot_data(
    out_dir: Path,
    logits: np.ndarray,
    labels: np.ndarray,
    ood_logits: dict[str, np.ndarray],
    temperature: float,
    n_bins: int,
    class_names: Sequence[str],
) -> None:
    """Write the CSV files ``dvc.yaml``'s plots section declares, and the reliability PNG.

    One file per plot, with the series it compares as a column (``calibration`` in
    ``reliability.csv``, ``ood_set`` in ``roc.csv``), so the templates under ``.dvc/plots/`` colour
    by it and the legends name the series rather than files; the confusion matrix has class
    names.
    """
    header = ["calibration", "bin_center", "confidence", "accuracy", "gap", "count"]
    per_scaling, ece, rows = {}, {}, []
    for name, t in (("raw", 1.0), ("scaled", temperature)):
        probs = softmax(logits, t)
        bins = reliability_bins(probs, labels, n_bins)
        per_scaling[name] = bins
        ece[name] = expected_calibration_error(probs, labels, n_bins)
        rows += reliability_rows(bins, CALIBRATION_LABELS[name])
    write_csv(out_dir / "reliability.csv", header, rows)
    roc_rows: list[list[object]] = []
    for name, z in ood_logits.items():
        fpr, tpr = roc_points(max_softmax(logits / temperature), max_softmax(z / temperature))
        roc_rows += [[name, float(f), float(t)] for f, t in zip(fpr, tpr, strict=True)]
    write_csv(out_dir / "roc.csv", ["ood_set", "fpr", "tpr"], roc_rows)
    predicted = logits.argmax(1)
    names = list(class_names)
    write_csv(
        out_dir / "confusion.csv",
        ["actual", "predicted"],
        [[names[a], names[p]] for a, p in zip(labels, predicted, strict=True)],
    )
    reliability_png(out_dir / "reliability.png", per_scaling, ece, temperature)


def write_offline_template(path: Path) -> None:
    """An HTML template for ``dvc plots show`` with Vega, Vega-Lite and Vega-Embed inline.

    DVC's default page loads the three from a CDN, so offline only the PNG rendered.
    ``.dvc/config`` names this file (``plots.html_template``); ``make setup`` writes it (the
    bundle, about 0.9 MB, is vl-convert's, not committed). Without the ``{scripts}`` placeholder
    DVC adds no CDN tags.
    """
    import vl_convert  # a dev dependency: only this set-up step needs it

    bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    page = (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset='utf-8'>\n{refresh_tag}\n"
        "<title>rankcal plots</title>\n<script type='text/javascript'>\n"
        f"{bundle}\n</script>\n"
        "<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n"
        "</body>\n</html>\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def reliability_png(
    path: Path, bins: dict[str, ReliabilityBins], ece: dict[str, float], temperature: float
) -> None:
    """Reliability diagrams (accuracy bars, gap to the diagonal) over confidence histograms."""
    fig, axes = plt.subplots(
        2,
        len(bins),
        figsize=(5 * len(bins), 6.5),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1]},
        squeeze=False,
    )
    for col, (name, b) in enumerate(bins.items()):
        top, bottom = axes[0, col], axes[1, col]
        width = b.upper - b.lower
        filled = b.count > 0
        acc = np.where(filled, b.accuracy, 0.0)
        conf = np.where(filled, b.confidence, 0.0)
        top.bar(
            b.lower, acc, width, align="edge", color="#3b75af", edgecolor="black", label="accuracy"
        )
        top.bar(
            b.lower,
            conf - acc,
            width,
            bottom=acc,
            align="edge",
            color="#d62728",
            alpha=0.35,
            edgecolor="#d62728",
            hatch="//",
            label="gap to confidence",
        )
        top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        title = "before scaling" if name == "raw" else f"after scaling (T = {temperature:.2f})"
        top.set_title(f"{title}: ECE {100 * ece[name]:.2f}%")
        top.set_ylabel("accuracy")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(
            b.lower,
            b.count / max(int(b.count.sum()), 1),
            width,
            align="edge",
            color="#7f7f7f",
            edgecolor="black",
        )
        bottom.set_xlabel("confidence (max softmax)")
        bottom.set_ylabel("share of samples")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
