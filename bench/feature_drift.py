"""Does a feature-space statistic catch the shifts the input statistics miss?

The service watches four pixel statistics (``pipeline/input_stats.py``). They cannot see a
rotation: a rotated image has the same intensities. This study scores each row of the
evaluation's shift study (the same corruptions, severities and test subset) two ways against
the training split: the largest PSI of the four input statistics, and the PSI of the L2 norm of
the penultimate-layer features (the input of the classifier's last linear layer), binned on the
training split's deciles. Beside them, how far estimated accuracy is from the true one on that
row. A feature statistic earns its place in the service (an extra ONNX output) if it is large
where the error is large and the input PSI is small.

Usage (the model and data of ``dvc repro``)::

    python bench/feature_drift.py [--model models/model.pt] [--data data/prepared]
        [--params params.yaml] [--images 2000] [--out results.json]

The table (markdown) goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

if not __package__:  # run as ``python bench/feature_drift.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.calibration import estimated_accuracy, fit_temperature, softmax
from pipeline.checkpoint import load_model
from pipeline.config import load_section, read_params
from pipeline.data import load_prepared
from pipeline.data.corruptions import corrupt
from pipeline.data.split import stratified_subset
from pipeline.drift import psi
from pipeline.input_stats import STATISTICS, reference_histograms
from pipeline.preprocessing import to_model_input

DECILES = np.linspace(0.0, 1.0, 11)


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier's final linear layer (its input is the penultimate feature vector)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no linear layer to take features before")
    return linears[-1]


def features_and_logits(
    model: nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and logits of uint8 NHWC ``images`` (eval mode, CPU)."""
    captured: list[torch.Tensor] = []
    hook = last_linear(model).register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0].detach().float())
    )
    logits = []
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), 512):
                x = torch.from_numpy(to_model_input(images[start : start + 512], mean, std))
                logits.append(model(x.contiguous(memory_format=torch.channels_last)).float())
    finally:
        hook.remove()
    return torch.cat(captured).double().numpy(), torch.cat(logits).double().numpy()


def norm_psi(norms: np.ndarray, edges: np.ndarray, reference: np.ndarray) -> float:
    """PSI of feature norms binned on the training deciles ``edges`` (open-ended outer bins)."""
    idx = np.clip(np.searchsorted(edges, norms, side="left") - 1, 0, len(edges) - 2)
    return psi(np.bincount(idx, minlength=len(edges) - 1), reference)


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    """Every shift row with its input PSI, feature-norm PSI and estimation error."""
    params = read_params(args.params)
    cfg = load_section(params, "evaluate")
    data = load_prepared(args.data)
    model, _ = load_model(args.model)
    train = np.asarray(data.train.images[data.train_idx[: args.reference]])
    val = np.asarray(data.train.images[data.val_idx])
    train_features, _ = features_and_logits(model, train, data.mean, data.std)
    _, val_logits = features_and_logits(model, val, data.mean, data.std)
    temperature = fit_temperature(val_logits, data.train.labels[data.val_idx]).temperature
    train_norms = np.linalg.norm(train_features, axis=1)
    edges = np.quantile(train_norms, DECILES)
    edges[0], edges[-1] = -np.inf, np.inf
    reference_norms = np.full(len(edges) - 1, len(train_norms) / (len(edges) - 1))
    pixel_reference = reference_histograms(train)
    images, labels = data.test.images, data.test.labels
    if args.images < len(labels):
        keep = stratified_subset(labels, args.images, seed=0)
        images, labels = images[keep], labels[keep]
    rows = [("clean", 0)] + [(name, level) for name in cfg.corruptions for level in cfg.severities]
    out = []
    for name, level in rows:
        batch = images if name == "clean" else corrupt(images, name, level, seed=level)
        feats, logits = features_and_logits(model, batch, data.mean, data.std)
        probs = softmax(logits, temperature)
        acc = float((probs.argmax(1) == labels).mean())
        counts = reference_histograms(batch)
        out.append(
            {
                "corruption": name,
                "severity": level,
                "estimation_error": 100 * abs(estimated_accuracy(probs) - acc),
                "input_psi": max(psi(counts[s], pixel_reference[s]) for s in STATISTICS),
                "feature_norm_psi": norm_psi(np.linalg.norm(feats, axis=1), edges, reference_norms),
            }
        )
        print(f"{name} {level}: {out[-1]}", file=sys.stderr, flush=True)
    return out


def render(rows: list[dict[str, object]]) -> str:
    """The rows as a markdown table, by estimation error."""
    lines = [
        "| corruption | severity | estimation error (points) | input PSI | feature-norm PSI |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: -float(r["estimation_error"])):  # type: ignore[arg-type]
        lines.append(
            f"| {r['corruption']} | {r['severity']} | {r['estimation_error']:.1f} | "
            f"{r['input_psi']:.3f} | {r['feature_norm_psi']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, print the table, optionally write the rows as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--images", type=int, default=2000, help="test images per row")
    p.add_argument("--reference", type=int, default=10000, help="training images binned")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    rows = run(args)
    print(render(rows))
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
