"""DVC stages of `make study` (study/dvc.yaml): compare every loss on one data, model, epochs,
over ``study.seeds``.

``run NAME --seed S`` trains and evaluates one row (a loss of ``study.losses`` or a
``study.tuned`` name) with seed S and writes ``--rows``/NAME-sS.json; checkpoints go under
``--work``/NAME-sS so a killed run resumes. ``table`` collects the rows in params order into
``--out``/results.csv (per row: mean, spread, paired difference from CE; committed),
results_seeds.csv (every seed), results.md and shift.png; with ``--partial``, of the rows that
have run so far (a study still running, or stopped part-way).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, StudyConfig, load_section
from pipeline.data import DataError
from pipeline.io import write_json
from pipeline.study import (
    row_id,
    run_row,
    study_data_config,
    study_runs,
    study_train_config,
)
from pipeline.study_table import plot_shift, write_tables
from pipeline.training import DivergedError
from stages.common import parser, setup
from stages.download import add_source_args, prepare


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_source_args(p)
    p.add_argument("command", choices=["run", "table"])
    p.add_argument("name", nargs="?", help="row to run (run only)")
    p.add_argument("--seed", type=int, help="training seed of the row (run only)")
    p.add_argument("--rows", type=Path, default=Path("study/rows"))
    p.add_argument("--work", type=Path, default=Path("study/runs"))
    p.add_argument("--out", type=Path, default=Path("study"))
    p.add_argument(
        "--root",
        type=Path,
        help="run only: the data.root of this row (a study over several folders, study/photos)",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="table only: tabulate the rows that have run, leaving out the missing ones",
    )
    args = p.parse_args(argv)
    try:
        params = setup(args)
        study: StudyConfig = load_section(params, "study")
        runs = {r.name: r for r in study_runs(load_section(params, "loss"), study)}
        if args.command == "table":
            ids = [row_id(name, seed) for name in runs for seed in study.seeds]
            if args.partial:
                missing = [i for i in ids if not (args.rows / f"{i}.json").is_file()]
                if len(missing) == len(ids):
                    raise FileNotFoundError(f"no study row has run yet under {args.rows}")
                if missing:
                    print(f"study: left out (not run yet): {', '.join(missing)}", file=sys.stderr)
                ids = [i for i in ids if i not in missing]
            summaries = write_tables([_read_row(args.rows / f"{i}.json") for i in ids], args.out)
            plot_shift(summaries, args.out / "shift.png")
            return 0
        if args.name not in runs:
            raise ConfigError(f"no study row {args.name!r}; rows are {list(runs)}")
        if args.seed is None:
            raise ConfigError(f"run {args.name} needs --seed (study.seeds: {study.seeds})")
        data_cfg = study_data_config(load_section(params, "data"), study)
        if args.root is not None:
            data_cfg = dataclasses.replace(data_cfg, root=str(args.root))
        model_cfg = load_section(params, "model")
        data = prepare(data_cfg, args, max_train=study.max_train, normalize=model_cfg.normalize)
        row = run_row(
            data,
            runs[args.name],
            model_cfg,
            study_train_config(load_section(params, "train"), study, args.seed),
            load_section(params, "evaluate"),
            args.work / row_id(args.name, args.seed),
        )
    except (ConfigError, DataError, DivergedError, FileNotFoundError) as err:
        print(f"study: {err}", file=sys.stderr)
        return 2
    write_json(args.rows / f"{row_id(args.name, args.seed)}.json", row)
    return 0


def _read_row(path: Path) -> dict[str, Any]:
    if not path.is_file():
        name, seed = path.stem.rsplit("-s", 1)
        raise FileNotFoundError(
            f"{path} is missing: run `python -m stages.study run {name} --seed {seed}`"
        )
    return json.loads(path.read_text())


if __name__ == "__main__":
    sys.exit(main())
