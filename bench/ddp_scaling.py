"""Training throughput of the train stage with 1, 2, ... data-parallel processes (torchrun).

Each count runs the real stage (``python -m stages.train``) on the prepared data for the same
epochs and global batch, with the CPU cores shared out: ``threads = cores // processes`` per
process. Reported: images/s over the whole run (validation on rank 0 and checkpoints
included, as in a real run), and the last epoch's validation accuracy, which should barely move
with the count for the default ranking loss (each process mixes within its own rows).

Usage: python bench/ddp_scaling.py [--procs 1 2] [--epochs 1] [--data data/prepared]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline.config import read_params
from pipeline.data import load_prepared

ROOT = Path(__file__).resolve().parents[1]


def run(params: dict, nproc: int, data: Path, work: Path, cores: int) -> dict[str, float]:
    """One stage run with ``nproc`` processes; its seconds, images/s and accuracy."""
    params["train"].update(nproc_per_node=nproc, threads=max(cores // nproc, 1))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    command = [
        *(sys.executable, "-m", "stages.train", "--params", str(work / "params.yaml")),
        *("--data", str(data), "--checkpoints", str(work / "ck"), "--model", str(work / "m.pt")),
        *("--metrics", str(work / "train.json"), "--live", str(work / "live")),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((work / "train.json").read_text())
    return {"seconds": metrics["seconds"], "val_accuracy": metrics["val_accuracy"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    p.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    n_train = len(load_prepared(args.data, mmap=True).train_idx)
    rows = []
    print("| processes | threads each | seconds | images/s | ratio | val accuracy % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for nproc in args.procs:
        params = read_params(args.params)
        params["train"]["epochs"] = args.epochs
        with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as work:
            row = run(params, nproc, args.data, Path(work), args.cores)
        row.update(processes=nproc, images_per_s=n_train * args.epochs / row["seconds"])
        rows.append(row)
        ratio = row["images_per_s"] / rows[0]["images_per_s"]
        print(
            f"| {nproc} | {max(args.cores // nproc, 1)} | {row['seconds']:.1f} | "
            f"{row['images_per_s']:,.0f} | {ratio:.2f} | {row['val_accuracy']:.2f} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
