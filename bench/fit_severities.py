"""Fit a dataset's corruption severities to a CE model: graded accuracy loss at severities 1..5.

For each corruption, each severity's parameter is found by bisection over the corruption's
range (:data:`pipeline.data.corruptions.PARAM_RANGES`) so that a cross-entropy model loses the
target number of accuracy points (clean accuracy minus corrupted accuracy, averaged over the
CE models given: seeds differ a lot in how much a background shift costs them) on fitting images:
the test images outside the shift evaluation's subset (``evaluate.shift_images``, drawn as
evaluation draws it), so the rows the pipeline reports are not the ones the parameters were
fitted on. The loss of accuracy is close to monotone in every parameter; the corruptions'
randomness is fixed while searching (one seed per corruption) so it stays so.

Then, with the fitted table, the accuracy loss of each model on the shift evaluation's own
images: how well the fit carries over, and how far seeds of the same recipe differ. The table
is printed as the Python literal ``pipeline/data/corruptions.py`` holds (paste it there), and
the report as markdown.

Usage::

    python bench/fit_severities.py [--models study/runs/ce-s*/best.pt] [--data data/prepared]
        [--targets 5 12 22 35 50] [--images 3000] [--steps 11]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.checkpoint import load_model
from pipeline.config import load_section, read_params
from pipeline.data import load_prepared
from pipeline.data.corruptions import CORRUPTIONS, PARAM_RANGES, corrupt
from pipeline.data.split import stratified_subset
from pipeline.inference import predict_logits

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (5.0, 12.0, 22.0, 35.0, 50.0)  # accuracy points lost at severities 1..5


def bisect_strength(
    loss_at: Callable[[float], float], target: float, steps: int
) -> tuple[float, float]:
    """The strength u in [0, 1] whose loss is nearest ``target``, for a loss rising with u.

    Bisection keeps ``lo`` below the target and ``hi`` at or above it; after ``steps`` halvings
    the one of the two whose loss is nearer the target is returned, with its loss. If even
    u = 1 stays below the target, u = 1 is returned.

    Returns:
        ``(u, loss_at(u))``.
    """
    lo, hi = 0.0, 1.0
    loss_lo, loss_hi = loss_at(lo), loss_at(hi)
    if loss_hi < target:
        return hi, loss_hi
    if loss_lo >= target:
        return lo, loss_lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        loss_mid = loss_at(mid)
        if loss_mid < target:
            lo, loss_lo = mid, loss_mid
        else:
            hi, loss_hi = mid, loss_mid
    return (lo, loss_lo) if target - loss_lo < loss_hi - target else (hi, loss_hi)


def parameter(name: str, u: float) -> float:
    """The parameter of corruption ``name`` at strength u (0: mildest end, 1: strongest)."""
    mild, strong = PARAM_RANGES[name]
    return mild + u * (strong - mild)


def fit_table(
    accuracy_of: Callable[[np.ndarray], float],
    images: np.ndarray,
    names: Sequence[str],
    targets: Sequence[float],
    steps: int,
) -> tuple[dict[str, tuple[float, ...]], dict[str, list[float]]]:
    """Each corruption's parameters for ``targets`` (points lost against clean ``images``).

    Severities are fitted in order and each starts its search where the last one ended, so
    the parameters grow with the severity even where the loss is flat (pixelate's steps).

    Returns:
        The table (3 significant digits) and the loss each fitted parameter gave.
    """
    clean = accuracy_of(images)
    table: dict[str, tuple[float, ...]] = {}
    reached: dict[str, list[float]] = {}
    for k, name in enumerate(tqdm(names, desc="corruptions", disable=None)):
        rng_seed = [0, k]  # one draw of the corruption's randomness for the whole search

        def loss_at(value: float, name: str = name, rng_seed: list[int] = rng_seed) -> float:
            rng = np.random.default_rng(rng_seed)
            return clean - accuracy_of(CORRUPTIONS[name](images, value, rng))

        params, losses, floor = [], [], 0.0
        for target in targets:
            u, _ = bisect_strength(
                lambda u, floor=floor, name=name: loss_at(parameter(name, floor + u * (1 - floor))),
                target,
                steps,
            )
            floor = floor + u * (1 - floor)
            value = float(f"{parameter(name, floor):.3g}")
            # A parameter that acts in whole pixels (pixelate's block count, occlusion's side)
            # can give the last severity's images again: step on until it does not.
            while params and _same_images(name, images, value, params[-1]) and floor < 1:
                floor = min(1.0, floor + 0.01)
                value = float(f"{parameter(name, floor):.3g}")
            params.append(value)
            losses.append(loss_at(value))
        table[name] = tuple(params)
        reached[name] = losses
    return table, reached


def _same_images(name: str, images: np.ndarray, a: float, b: float) -> bool:
    """Whether corruption ``name`` with parameters ``a`` and ``b`` (same randomness) agree."""
    first = CORRUPTIONS[name](images[:64], a, np.random.default_rng(0))
    return bool(np.array_equal(first, CORRUPTIONS[name](images[:64], b, np.random.default_rng(0))))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        type=Path,
        nargs="+",
        default=sorted((ROOT / "study/runs").glob("ce-s*/best.pt")),
        help="CE models; the fit aims at their mean loss",
    )
    p.add_argument("--data", type=Path, default=ROOT / "data/prepared")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="evaluate section")
    p.add_argument("--targets", type=float, nargs=5, default=list(TARGETS))
    p.add_argument("--images", type=int, default=3000, help="fitting images (outside the shift)")
    p.add_argument("--steps", type=int, default=11, help="bisection steps per severity")
    args = p.parse_args(argv)
    missing = [m for m in args.models if not m.is_file()]
    if not args.models or missing:
        print(
            f"no CE model at {missing or 'study/runs/ce-s*/best.pt'}: run `make study` (or pass "
            "--models)",
            file=sys.stderr,
        )
        return 2
    cfg = load_section(read_params(args.params), "evaluate")
    data = load_prepared(args.data, mmap=True)
    images, labels = np.asarray(data.test.images), np.asarray(data.test.labels)
    # The shift evaluation's images, drawn as pipeline.evaluation.shift_study draws them.
    shown = stratified_subset(labels, cfg.shift_images, seed=0) if cfg.shift_images else None
    rest = np.setdiff1d(np.arange(len(labels)), shown if shown is not None else [])
    fit_idx = np.sort(np.random.default_rng(1).choice(rest, min(args.images, len(rest)), False))

    def accuracy(paths: Sequence[Path], idx: np.ndarray) -> Callable[[np.ndarray], float]:
        """Mean accuracy (%) of the models on a batch of the images ``idx`` (corrupted or not)."""
        models = [load_model(path) for path in paths]

        def accuracy_of(batch: np.ndarray) -> float:
            hits = [
                (predict_logits(m, batch, meta["mean"], meta["std"], 1000).argmax(1) == labels[idx])
                for m, meta in models
            ]
            return 100 * float(np.mean(hits))

        return accuracy_of

    names = list(cfg.corruptions)
    table, reached = fit_table(
        accuracy(args.models, fit_idx), images[fit_idx], names, args.targets, args.steps
    )
    print(f"{data.dataset.upper()}_SEVERITY_PARAMS = {{")
    for name in names:
        print(f'    "{name}": {table[name]},')
    print("}\n")
    aims = ", ".join(f"{t:g}" for t in args.targets)
    print(f"Accuracy points lost at severities 1..5 (aimed for {aims}):\n")
    eval_idx = shown if shown is not None else np.arange(len(labels))
    runs = [m.parent.name for m in args.models]
    header = ["corruption", "parameters", "fit (mean)", *(f"shift images: {r}" for r in runs)]
    print("| " + " | ".join(header) + " |")
    print("| --- | --- | ---: |" + " ---: |" * len(runs))
    evaluated = {r: accuracy([m], eval_idx) for r, m in zip(runs, args.models, strict=True)}
    clean = {r: acc(images[eval_idx]) for r, acc in evaluated.items()}
    for name in names:
        cells = [name, ", ".join(f"{v:g}" for v in table[name])]
        cells.append(" / ".join(f"{x:.0f}" for x in reached[name]))
        batches = [corrupt(images[eval_idx], name, s, seed=s, table=table) for s in range(1, 6)]
        for r, acc in evaluated.items():
            cells.append(" / ".join(f"{clean[r] - acc(b):.0f}" for b in batches))
        print("| " + " | ".join(cells) + " |")
    shown_clean = ", ".join(f"{r} {v:.1f}%" for r, v in clean.items())
    print(f"\nClean accuracy on the shift images: {shown_clean}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
