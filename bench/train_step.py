"""Time one training step of each objective on the default model, side by side.

A step with k mixed copies costs about 1 + k forward/backward passes of the batch; ``mixup``
(mixed pass only) should cost about as much as ``ce``. Objectives and precisions (fp32, and bf16
autocast as training uses it where the CPU computes bf16 natively) are timed round-robin so
machine noise hits them alike; each is reported as a ratio to fp32 ``ce``, and bf16 as its
speed-up over fp32. Channels-last, as training runs.

With a folder dataset's params (``--params presets/photos.yaml``) the batch has that folder's
image size and channels.

Usage: python bench/train_step.py [--params params.yaml] [--rounds 20] [--batch-size 128]
    [--precisions fp32 bf16] [--arch wrn16_4]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from pipeline.config import load_section, read_params
from pipeline.models import build_model
from pipeline.objective import compute_loss
from pipeline.training import batchnorm_in_fp32

OBJECTIVES = {"ce": 0, "mixup": 1, "mrl": 1, "mndcg": 3}  # name -> mixed copies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--arch", help="another network than model.arch (e.g. the paper regime's)")
    args = p.parse_args()
    params = read_params(args.params)
    if args.arch:
        params["model"]["arch"] = args.arch
    model_cfg, base_loss = load_section(params, "model"), load_section(params, "loss")
    torch.manual_seed(0)
    data = params["data"]
    # a folder's images as its params size them (presets/photos.yaml); else Fashion-MNIST's
    shape = (data["channels"], *data["image_size"]) if data["dataset"] == "folder" else (1, 28, 28)
    model = build_model(model_cfg.arch, num_classes=10, in_channels=shape[0])
    model.to(memory_format=torch.channels_last)
    if "bf16" in args.precisions:
        batchnorm_in_fp32(model)  # as training does under CPU bf16 (a no-op cast in fp32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, *shape).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    rng = np.random.default_rng(0)
    configs = {
        name: dataclasses.replace(base_loss, name=name, num_mixes=3, mrl_copies=1)
        for name in OBJECTIVES
    }

    def step(name: str, precision: str) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = compute_loss(model, x, y, configs[name], rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    runs = [(name, precision) for precision in args.precisions for name in OBJECTIVES]
    for run in runs:  # warm-up
        step(*run)
    times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    for _ in range(args.rounds):
        for run in runs:
            times[run].append(step(*run))
    medians = {run: statistics.median(t) for run, t in times.items()}
    base = medians[("ce", args.precisions[0])]
    native = torch.cpu._is_avx512_bf16_supported()
    print(
        f"model={model_cfg.arch} batch={args.batch_size} threads={torch.get_num_threads()} "
        f"rounds={args.rounds} mixing={base_loss.mixing} cpu_native_bf16={native}"
    )
    print(f"{'loss':8} {'precision':9} {'copies':>6} {'ms/step':>8} {'ratio':>6} {'speed-up':>8}")
    for name, precision in runs:
        median = medians[(name, precision)]
        fp32 = medians.get((name, "fp32"))
        speedup = f"{fp32 / median:8.2f}" if precision == "bf16" and fp32 else f"{'':>8}"
        print(
            f"{name:8} {precision:9} {OBJECTIVES[name]:6d} {median * 1e3:8.1f} "
            f"{median / base:6.2f} {speedup}"
        )


if __name__ == "__main__":
    main()
