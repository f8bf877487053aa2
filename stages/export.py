"""DVC stage `export`: the best checkpoint as ONNX with temperature and softmax inside, verified.

Reads the ``evaluate`` params section (``n_bins``, ``batch_size``: the ECE must be binned as the
evaluate stage binned it); writes ``--out`` only after the file passed every check of
:func:`pipeline.export.verify_export`, and the check figures to ``--metrics``. Exit code 2 means
bad input, 1 a failed verification; neither leaves a model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from onnx.checker import ValidationError

from pipeline.checkpoint import load_model
from pipeline.config import ConfigError, EvaluateConfig, load_section
from pipeline.data import DataError, PreparedData, load_prepared
from pipeline.export import ExportError, export_onnx, verify_export
from pipeline.io import atomic_path, write_json
from pipeline.model_card import ModelCard
from stages.common import parser, setup


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--calibration", type=Path, default=Path("models/calibration.json"))
    p.add_argument("--eval-metrics", type=Path, default=Path("metrics/eval.json"))
    p.add_argument("--out", type=Path, default=Path("models/model.onnx"))
    p.add_argument("--metrics", type=Path, default=Path("metrics/export.json"))
    args = p.parse_args(argv)
    try:
        cfg: EvaluateConfig = load_section(setup(args), "evaluate")
        data = load_prepared(args.data)
        model, _ = load_model(args.model)
        card = ModelCard.from_reference(read_json(args.calibration), model_version(args.model))
        expected = expected_ece(read_json(args.eval_metrics), card, data)
    except (ConfigError, DataError, OSError, ValueError) as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    try:
        with atomic_path(args.out) as tmp:
            export_onnx(model, card, tmp)
            test = data.test
            figures = verify_export(
                tmp, model, test.images, test.labels, card, expected, cfg.n_bins, cfg.batch_size
            )
    except (ExportError, ValidationError) as err:
        print(f"export: verification failed, {args.out} not written: {err}", file=sys.stderr)
        return 1
    write_json(args.metrics, {**figures, "model_version": card.model_version})
    return 0


def read_json(path: Path) -> dict[str, Any]:
    """The JSON in ``path``; a missing or malformed file raises ``OSError`` / ``ValueError``."""
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def expected_ece(metrics: dict[str, Any], card: ModelCard, data: PreparedData) -> float:
    """``test.scaled.ece`` (percent) of ``metrics/eval.json``, checked against the card and data.

    ``calibration.json`` and ``eval.json`` are written by the same evaluate run, so their ECE and
    temperature must agree exactly; the card must also describe ``data``'s dataset and images.
    """
    try:
        ece, temperature = metrics["test"]["scaled"]["ece"], metrics["temperature"]["temperature"]
    except (KeyError, TypeError) as err:
        raise ConfigError(f"eval metrics lack test.scaled.ece or temperature: {err!r}") from None
    if (ece, temperature) != (card.test_ece, card.temperature):
        raise ConfigError(
            f"eval metrics (ece {ece}, T {temperature}) and calibration (test_ece "
            f"{card.test_ece}, T {card.temperature}) come from different evaluate runs"
        )
    shape = list(data.image_shape)
    if (data.dataset, shape) != (card.dataset, list(card.image_shape)):
        raise ConfigError(
            f"data is {data.dataset} {shape}, the card says {card.dataset} {card.image_shape}"
        )
    return float(ece)


def model_version(model_path: Path) -> str:
    """``$RANKCAL_MODEL_VERSION``, else ``<git describe>-<sha256[:8] of the weights>``.

    The weight hash tells apart two trainings at the same git revision; ``unknown`` stands in
    for the git part where git or the repository is unavailable.
    """
    if version := os.environ.get("RANKCAL_MODEL_VERSION"):
        return version
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:8]
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{described or 'unknown'}-{digest}"


if __name__ == "__main__":
    sys.exit(main())
