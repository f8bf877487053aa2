"""Run a study's rows on a borrowed GPU machine, several at once, into a folder of row files.

The paper regime (``presets/study_paper.yaml``) costs 2 to 4 hours a seed on this project's
2-core CPUs, so its three seeds take several sessions; a GPU machine trains them in one call.
This runs the library directly (:func:`pipeline.study.run_row`, as ``python -m stages.study run``
does, never the ``stages/`` entry points, whose tooling the device lacks): the data are prepared
once with the project's code (checksums verified, no download), then ``--jobs`` worker processes
share the GPU, one row (a study row and a seed) at a time each.

Each row is written to ``<out>/rows/<name>-s<seed>.json``, the file ``stages.study run`` writes,
and it records the GPU's name as its ``device``. A row whose file is already there is skipped,
so a second call (a second device session, given the first one's rows back) finishes what the
first left. ``<out>/gpu_study.json`` has the device, the versions and every row's seconds.

Rows trained on a GPU are a set of their own: numerics differ from a CPU's, and the study table
names seeds paired with a CE row from another machine. Tabulate them on the CPU machine with
``python -m stages.study table --params presets/study_paper.yaml --rows <fetched>/rows
--out <folder>``.

Usage on the device, through bench/gpu_check.sh (it supplies pydantic and the data)::

    RANKCAL_GPU_SCRIPT=bench/gpu_study.py bench/gpu_check.sh --jobs 6

Usage as a CPU dry run (about a minute on 2 cores)::

    python bench/gpu_study.py --device cpu --epochs 1 --max-train 200 --max-test 200 \\
        --names ce mrl --seeds 0 --jobs 2 --fashion-mnist /usr/share/datasets/fashion-mnist \\
        --out /tmp/gs
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
# On the device the project is a plain copy, not an installed package (as bench/gpu_check.py).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu_check import refuse_download  # noqa: E402
from pipeline.config import load_section, read_params  # noqa: E402
from pipeline.data import load_checksums, load_prepared, prepare_data, save_prepared  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.study import (  # noqa: E402
    row_id,
    run_row,
    study_data_config,
    study_runs,
    study_train_config,
)
from pipeline.training import device_name  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Job:
    """One row to run: what a worker process needs, all of it picklable."""

    name: str
    seed: int
    params: dict[str, Any]
    prepared: Path
    work: Path
    rows: Path
    device: str
    threads: int


def study_params(params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The params with the dry-run caps applied (``--epochs``, ``--max-train``, ``--max-test``)."""
    params = json.loads(json.dumps(params))  # a copy, plain types
    if args.epochs is not None:
        params["study"]["epochs"] = args.epochs
    if args.max_train is not None:
        params["study"]["max_train"] = args.max_train
    if args.max_test is not None:
        params["data"]["max_test"] = args.max_test
    return params


def run_job(job: Job) -> tuple[str, float, dict[str, Any]]:
    """Train and evaluate one row in this worker process; write its file last (atomically)."""
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(job.threads)
    study = load_section(job.params, "study")
    runs = {r.name: r for r in study_runs(load_section(job.params, "loss"), study)}
    train_cfg = study_train_config(load_section(job.params, "train"), study, job.seed)
    train_cfg = dataclasses.replace(train_cfg, device=job.device, threads=job.threads)
    started = time.perf_counter()
    row = run_row(
        load_prepared(job.prepared, mmap=True),
        runs[job.name],
        load_section(job.params, "model"),
        train_cfg,
        load_section(job.params, "evaluate"),
        job.work / row_id(job.name, job.seed),
    )
    write_json(job.rows / f"{row_id(job.name, job.seed)}.json", row)
    return row_id(job.name, job.seed), time.perf_counter() - started, row


def pending_jobs(params: dict[str, Any], args: argparse.Namespace, prepared: Path) -> list[Job]:
    """Every (row, seed) asked for whose row file is not written yet, seeds outermost, so a
    call cut short leaves whole seeds."""
    study = load_section(params, "study")
    names = [r.name for r in study_runs(load_section(params, "loss"), study)]
    unknown = sorted(set(args.names or []) - set(names))
    if unknown:
        raise ValueError(f"no study row {unknown}; rows are {names}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return [
        Job(name, seed, params, prepared, args.work, args.out / "rows", args.device, threads)
        for seed in (args.seeds or study.seeds)
        for name in (args.names or names)
        if not (args.out / "rows" / f"{row_id(name, seed)}.json").is_file()
    ]


def prepare(params: dict[str, Any], fashion_mnist: Path, work: Path) -> Path:
    """The study's data, prepared once with the project's code into ``work/prepared``."""
    study = load_section(params, "study")
    cfg = study_data_config(load_section(params, "data"), study)
    checksums = {"fashion_mnist": load_checksums(ROOT / "checksums" / "fashion-mnist.sha256")}
    data = prepare_data(
        cfg,
        work / "raw",
        max_train=study.max_train,
        system_dir=fashion_mnist,
        checksums=checksums,
        downloader=refuse_download,
    )
    save_prepared(data, work / "prepared")
    return work / "prepared"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=ROOT / "presets" / "study_paper.yaml")
    p.add_argument("--fashion-mnist", type=Path, required=True, help="the four .gz IDX files")
    p.add_argument("--out", type=Path, required=True, help="rows/ and gpu_study.json go here")
    p.add_argument("--work", type=Path, help="data and checkpoints (default: a scratch folder)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--jobs", type=int, default=4, help="rows trained at once")
    p.add_argument("--names", nargs="+", help="rows to run (default: all of the study's)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: study.seeds)")
    p.add_argument("--epochs", type=int, help="dry runs: fewer epochs than study.epochs")
    p.add_argument("--max-train", type=int, help="dry runs: a smaller pool than study.max_train")
    p.add_argument("--max-test", type=int, help="dry runs: fewer test images")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device: use --device cpu for a dry run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    params = study_params(read_params(args.params), args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-study-") as scratch:
        args.work = args.work or Path(scratch)
        try:
            prepared = prepare(params, args.fashion_mnist, args.work)
            jobs = pending_jobs(params, args, prepared)
        except (OSError, ValueError) as err:
            print(f"gpu_study: {err}", file=sys.stderr)
            return 2
        print(f"gpu_study: {len(jobs)} rows to run, {args.jobs} at a time", flush=True)
        seconds: dict[str, float] = {}
        failed: dict[str, str] = {}
        # spawn: CUDA cannot be used in a forked child.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = {pool.submit(run_job, job): row_id(job.name, job.seed) for job in jobs}
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                rid = futures[future]
                try:
                    _, took, row = future.result()
                except Exception as err:  # one row's failure must not stop the others
                    failed[rid] = f"{type(err).__name__}: {err}"
                    print(f"[{done}/{len(jobs)}] {rid} FAILED: {failed[rid]}", flush=True)
                    continue
                seconds[rid] = took
                print(
                    f"[{done}/{len(jobs)}] {rid}: {took:.0f} s, accuracy {row['accuracy']:.2f}%, "
                    f"ECE {row['ece']:.2f}%",
                    flush=True,
                )
    report = {
        "device": device_name(torch.device(args.device)),
        "torch": torch.__version__,
        "jobs": args.jobs,
        "wall_seconds": time.perf_counter() - started,
        "row_seconds": seconds,
        "failed": failed,
    }
    write_json(args.out / "gpu_study.json", report)
    print(f"gpu_study: {len(seconds)} rows in {report['wall_seconds']:.0f} s, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
