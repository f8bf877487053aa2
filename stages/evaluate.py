"""DVC stage `evaluate`: calibration, OOD and shift metrics of the best checkpoint.

Reads the ``evaluate`` params section; writes ``metrics/eval.json`` (every figure),
``--summary`` (the figures compared between runs, DVC's metrics), plot data under
``--plots`` (reliability, ROC, confusion; ``reliability.png``) and ``--serving``, the JSON the
service loads (temperature, class names, normalisation, OOD threshold, reference histogram).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.checkpoint import load_model
from pipeline.config import ConfigError, EvaluateConfig, load_section
from pipeline.data import DataError, load_prepared
from pipeline.evaluation import evaluate, summary
from pipeline.io import write_json
from pipeline.plots import write_plot_data
from stages.common import parser, setup


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--metrics", type=Path, default=Path("metrics/eval.json"))
    p.add_argument("--summary", type=Path, default=Path("metrics/eval_summary.json"))
    p.add_argument("--plots", type=Path, default=Path("plots/eval"))
    p.add_argument("--serving", type=Path, default=Path("models/calibration.json"))
    args = p.parse_args(argv)
    try:
        cfg: EvaluateConfig = load_section(setup(args), "evaluate")
        data = load_prepared(args.data)
        model, _ = load_model(args.model)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    result = evaluate(model, data, cfg)
    write_plot_data(
        args.plots,
        result.test_logits,
        result.test_labels,
        result.ood_logits,
        result.temperature,
        cfg.n_bins,
        data.class_names,
    )
    write_json(args.serving, result.serving)
    write_json(args.metrics, result.metrics)
    write_json(args.summary, summary(result.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
