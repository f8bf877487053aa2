"""Time one training step of each objective on the default model, side by side.

A step with k mixed copies costs about 1 + k forward/backward passes of the batch; ``mixup``
(mixed pass only) should cost about as much as ``ce``. Objectives are timed round-robin so
machine noise hits them alike, and each is reported as a ratio to ``ce``.

Usage: python bench/train_step.py [--params params.yaml] [--rounds 20] [--batch-size 128]
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

OBJECTIVES = {"ce": 0, "mixup": 1, "mrl": 1, "mndcg": 3}  # name -> mixed copies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    params = read_params(args.params)
    model_cfg, base_loss = load_section(params, "model"), load_section(params, "loss")
    torch.manual_seed(0)
    shape = (1, 28, 28)  # the default dataset, Fashion-MNIST
    model = build_model(model_cfg.arch, num_classes=10, in_channels=shape[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, *shape)
    y = torch.randint(0, 10, (args.batch_size,))
    rng = np.random.default_rng(0)
    configs = {
        name: dataclasses.replace(base_loss, name=name, num_mixes=3, mrl_copies=1)
        for name in OBJECTIVES
    }

    def step(name: str) -> float:
        start = time.perf_counter()
        loss, _ = compute_loss(model, x, y, configs[name], rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for name in OBJECTIVES:  # warm-up
        step(name)
    times: dict[str, list[float]] = {name: [] for name in OBJECTIVES}
    for _ in range(args.rounds):
        for name in OBJECTIVES:
            times[name].append(step(name))
    base = statistics.median(times["ce"])
    print(
        f"model={model_cfg.arch} batch={args.batch_size} threads={torch.get_num_threads()} "
        f"rounds={args.rounds} mixing={base_loss.mixing}"
    )
    print(f"{'loss':8} {'copies':>6} {'ms/step':>8} {'ratio':>6} {'expected':>8}")
    for name, copies in OBJECTIVES.items():
        median = statistics.median(times[name])
        expected = 1 + copies if name != "mixup" else 1
        print(f"{name:8} {copies:6d} {median * 1e3:8.1f} {median / base:6.2f} {expected:8.0f}")


if __name__ == "__main__":
    main()
