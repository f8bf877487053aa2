"""Serving speed in one run: ONNX Runtime vs PyTorch eager, the HTTP service, the framework floor.

1. The exported model in ONNX Runtime against the checkpoint it came from in PyTorch eager
   (wrapped with the card's temperature, so both compute the same probabilities), on the same
   preprocessed images, at batch 1 and 64, timed in alternating rounds (ABBA...).
2. The service (``serving/service.py``) under closed-loop load: N clients, each sending its next
   request as soon as the last is answered, on ``/classify`` (one PNG per request) with adaptive
   batching on and off, and on ``/classify_batch`` (64 images per request, as JSON and as a
   ``.npy`` file).
3. The framework's floor, ``bench/minimal_service.py`` (decode + the same ONNX session, and an
   echo), under the same load and with the same worker count.

The three servers run side by side and are measured in alternating rounds, so machine noise hits
them alike. Targets are printed as PASS/FAIL: a benchmark reports, it never fails.

Usage (the model, checkpoint, params and test images of ``dvc repro`` by default)::

    python bench/serve.py [--model models/model.onnx] [--checkpoint models/model.pt]
        [--params params.yaml] [--data data/prepared] [--seconds 10] [--rounds 4]
        [--workers 1] [--clients 1,8,32] [--threads N] [--device cpu|cuda] [--skip-http]
        [--out results.json]

The report (markdown) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import numpy as np

from pipeline.data import DataError, load_prepared
from pipeline.preprocessing import to_model_input
from serving.npy import npy_bytes

if not __package__:  # run as ``python bench/serve.py``: the repo root makes ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engines import ENGINE_BATCHES, compare_engines, load_engines
from bench.loadgen import (
    HEY,
    JSON,
    NPY,
    PNG,
    Case,
    LoadResult,
    batch_body,
    log,
    measure_http,
    png_bytes,
)
from bench.report import (
    BATCH_IMAGES,
    NPY_LABEL,
    Report,
    engine_checks,
    http_checks,
    machine,
    render,
)
from bench.servers import MINIMAL, OFF, ON, Server, probe, running_servers, served_provider

# --- inputs ------------------------------------------------------------------------------------


def load_images(data: Path, shape: Sequence[int], count: int) -> tuple[np.ndarray, str]:
    """Up to ``count`` test images of the prepared data when they have the model's shape, else
    ``count`` synthetic ones (uniform noise, seeded); with a word on which."""
    try:
        images = load_prepared(data).test.images
    except DataError:
        images = None
    if images is not None and images.shape[1:] == tuple(shape):
        return images[:count], f"{data} test set ({min(count, len(images))} images)"
    rng = np.random.default_rng(0)
    synthetic = rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)
    return synthetic, f"synthetic ({count} images of uniform noise)"


def http_cases(servers: dict[str, Server], images: np.ndarray) -> list[Case]:
    """What is measured: ``/classify`` of both services and the floor, the batch endpoint, echo."""
    pngs = [png_bytes(image) for image in images]
    starts = range(0, max(1, len(images) - BATCH_IMAGES + 1), BATCH_IMAGES)
    batches = [batch_body(images[s : s + BATCH_IMAGES]) for s in starts]
    npy_batches = [npy_bytes(images[s : s + BATCH_IMAGES]) for s in starts]
    per_batch = min(BATCH_IMAGES, len(images))
    return [
        Case(ON, "/classify", servers[ON].url, pngs, PNG),
        Case(OFF, "/classify", servers[OFF].url, pngs, PNG),
        Case(ON, "/classify_batch", servers[ON].url, batches, JSON, per_batch),
        Case(ON, "/classify_batch", servers[ON].url, npy_batches, NPY, per_batch, NPY_LABEL),
        Case(MINIMAL, "/classify", servers[MINIMAL].url, pngs, PNG),
        Case(MINIMAL, "/echo", servers[MINIMAL].url, pngs, PNG),
    ]


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/model.onnx"))
    p.add_argument("--checkpoint", type=Path, default=Path("models/model.pt"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="serve settings")
    p.add_argument("--data", type=Path, default=Path("data/prepared"), help="test images")
    p.add_argument("--images", type=int, default=512, help="distinct images sent")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    p.add_argument("--rounds", type=int, default=4, help="alternations per measurement")
    p.add_argument("--workers", type=int, default=1, help="worker processes per server")
    p.add_argument("--clients", type=_ints, default=[1, 8, 32], help="e.g. 1,8,32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="engines part")
    p.add_argument("--threads", type=int, help="CPU threads of both engines (default: theirs)")
    p.add_argument("--skip-http", action="store_true", help="engines only")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    counts = (args.rounds, args.workers, args.images, args.threads or 1)
    if args.seconds <= 0 or min(counts) < 1:
        p.error("--seconds must be > 0 and --rounds, --workers, --images, --threads >= 1")
    return args


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,32, got {text!r}")
    return values


def run(args: argparse.Namespace, command: str) -> Report:
    """Measure everything ``args`` asks for."""
    session, net, card = load_engines(args.model, args.checkpoint, args.device, args.threads)
    images, source = load_images(args.data, card.image_shape, args.images)
    log(f"inputs: {source}; timing ONNX Runtime vs torch eager")
    engine_batch = np.resize(images, (max(ENGINE_BATCHES), *images.shape[1:]))
    x = to_model_input(engine_batch, card.mean, card.std)
    rates = compare_engines(session, net, x, seconds=args.seconds, rounds=args.rounds)
    http, provider = ([], None) if args.skip_http else bench_http(args, images)
    names = ("seconds", "rounds", "workers", "clients", "device", "threads")
    settings = {
        **{k: getattr(args, k) for k in names},
        "images": source,
        "ort_threads": session.get_session_options().intra_op_num_threads or "default",
        "server_provider": provider,
        "load_generator": "hey" if HEY is not None else "python",
    }
    checks = engine_checks(rates) + http_checks(http, args.clients, rates)
    return Report(command, machine(args.device), settings, rates, http, checks)


def bench_http(args: argparse.Namespace, images: np.ndarray) -> tuple[list[LoadResult], str]:
    """Start the three servers, measure every case, stop them.

    Returns:
        The results, and the execution provider the service reports in ``/metrics``.
    """
    log(f"starting 3 servers with {args.workers} worker(s) each")
    with (
        tempfile.TemporaryDirectory(prefix="rankcal-bench-") as tmp,
        running_servers(args.model, args.params, args.workers, Path(tmp)) as servers,
    ):
        cases = http_cases(servers, images)
        for case in cases:
            probe(case)
        provider = served_provider(servers[ON].url)
        return measure_http(cases, args.clients, args.seconds, args.rounds), provider


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: re-raised as SIGINT, which asyncio turns into a clean cancellation."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the markdown report, write the JSON if asked."""
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join([".venv/bin/python", "bench/serve.py", *given])
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on kill as on Ctrl-C
    try:
        report = run(args, command)
    except KeyboardInterrupt:
        log("interrupted: servers stopped, nothing reported")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render(report))
    if args.out:
        with args.out.open("w") as fh:
            json.dump(report.to_json(), fh, indent=2, default=str)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
