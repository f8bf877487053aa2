"""Serving speed in one run: ONNX Runtime vs PyTorch eager, the HTTP service, the framework floor.

1. The exported model in ONNX Runtime against the checkpoint it came from in PyTorch eager
   (wrapped with the card's temperature, so both compute the same probabilities), on the same
   preprocessed images, at batch 1 and 64, timed in alternating rounds (ABBA...).
2. The service (``serving/service.py``) under closed-loop load: N clients, each sending its next
   request as soon as the last is answered, on ``/classify`` (one PNG per request) with adaptive
   batching on and off, and on ``/classify_batch`` (64 images per request).
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
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from pipeline.data import DataError, load_prepared
from pipeline.preprocessing import to_model_input

if not __package__:  # run as ``python bench/serve.py``: the repo root makes ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engines import ENGINE_BATCHES, EngineRate, compare_engines, load_engines
from bench.loadgen import (
    JSON,
    PNG,
    Case,
    LoadResult,
    batch_body,
    clients_label,
    log,
    measure_http,
    png_bytes,
)
from bench.servers import MINIMAL, OFF, ON, Server, probe, running_servers, served_provider

BATCH_IMAGES = 64  # images per /classify_batch request
TARGET_CLIENTS = 8  # the concurrency the serving targets are checked at


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
    per_batch = min(BATCH_IMAGES, len(images))
    return [
        Case(ON, "/classify", servers[ON].url, pngs, PNG),
        Case(OFF, "/classify", servers[OFF].url, pngs, PNG),
        Case(ON, "/classify_batch", servers[ON].url, batches, JSON, per_batch),
        Case(MINIMAL, "/classify", servers[MINIMAL].url, pngs, PNG),
        Case(MINIMAL, "/echo", servers[MINIMAL].url, pngs, PNG),
    ]


# --- targets and report ------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One target, the numbers behind it, and whether they meet it (None: reported only)."""

    target: str
    measured: str
    passed: bool | None


def engine_checks(rates: Sequence[EngineRate], minimum: float = 2.5) -> list[Check]:
    """ONNX Runtime at least ``minimum`` times PyTorch eager, per batch size."""
    return [
        Check(
            f"ORT ≥ {minimum}× torch eager, batch {r.batch}",
            f"{r.ort_ips:.0f} / {r.torch_ips:.0f} img/s = {r.ratio:.2f}×",
            r.ratio >= minimum,
        )
        for r in rates
    ]


def find(results: Sequence[LoadResult], server: str, endpoint: str, clients: int) -> LoadResult:
    """The result of one case at one concurrency.

    Raises:
        KeyError: If it was not measured.
    """
    for r in results:
        if (r.server, r.endpoint, r.clients) == (server, endpoint, clients):
            return r
    raise KeyError(f"{server} {endpoint} at {clients} clients was not measured")


def overhead_checks(results: Sequence[LoadResult], clients: Sequence[int]) -> list[Check]:
    """The service's ``/classify`` images/s at least 80% of the minimal endpoint's; checked at
    :data:`TARGET_CLIENTS`, reported at the other concurrencies."""
    checks = []
    for server in (ON, OFF):
        for n in clients:
            ours = find(results, server, "/classify", n)
            floor = find(results, MINIMAL, "/classify", n)
            ratio = ours.ips / floor.ips if floor.ips else math.nan
            checks.append(
                Check(
                    f"{server}: /classify ≥ 80% of minimal's img/s, {clients_label(n)}",
                    f"{ours.ips:.0f} / {floor.ips:.0f} img/s = {ratio:.0%}",
                    ratio >= 0.8 if n == TARGET_CLIENTS else None,
                )
            )
    return checks


def latency_and_batch_checks(results: Sequence[LoadResult], n: int) -> list[Check]:
    """At ``n`` clients: ``/classify`` p99 ≤ 3 × p50, and the batch endpoint's images/s at least
    10 × ``/classify``'s, for batching on and off."""
    batch = find(results, ON, "/classify_batch", n)
    checks = []
    for server in (ON, OFF):
        single = find(results, server, "/classify", n)
        tail = single.p99_ms / single.p50_ms
        checks.append(
            Check(
                f"{server}: /classify p99 ≤ 3 × p50, {clients_label(n)}",
                f"p99 {single.p99_ms:.1f} ms, p50 {single.p50_ms:.1f} ms = {tail:.1f}×",
                tail <= 3,
            )
        )
        gain = batch.ips / single.ips if single.ips else math.nan
        checks.append(
            Check(
                f"/classify_batch img/s ≥ 10 × /classify ({server}), {clients_label(n)}",
                f"{batch.ips:.0f} / {single.ips:.0f} img/s = {gain:.1f}×",
                gain >= 10,
            )
        )
    return checks


def http_checks(results: Sequence[LoadResult], clients: Sequence[int]) -> list[Check]:
    """All serving targets; those needing :data:`TARGET_CLIENTS` say so when it was not run."""
    if not results:
        return []
    checks = overhead_checks(results, clients)
    if TARGET_CLIENTS in clients:
        return checks + latency_and_batch_checks(results, TARGET_CLIENTS)
    return [*checks, Check(f"targets at {clients_label(TARGET_CLIENTS)}", "not measured", None)]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A markdown table; columns after the first ``left`` are right-aligned."""
    align = ["---"] * left + ["---:"] * (len(header) - left)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def machine(device: str) -> dict[str, Any]:
    """What ran the benchmark."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), Path("/proc/cpuinfo").open() as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": ort.__version__,
        "bentoml": version("bentoml"),
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class Report:
    """Everything one run measured, with how and where."""

    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    engines: list[EngineRate]
    http: list[LoadResult]
    checks: list[Check]

    def to_json(self) -> dict[str, Any]:
        """Plain data, derived rates included."""
        out = dataclasses.asdict(self)
        for row, rate in zip(out["engines"], self.engines, strict=True):
            row["ratio"] = rate.ratio
        for row, result in zip(out["http"], self.http, strict=True):
            row.update(rps=result.rps, ips=result.ips)
        return out


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "**FAIL**", None: "info"}[passed]


def render(report: Report) -> str:
    """The report as markdown, in the form of docs/benchmarks.md."""
    m, s = report.machine, report.settings
    gpu = f", {m['gpu']}" if m["gpu"] else ""
    engines = [
        [
            str(r.batch),
            f"{r.ort_ips:.0f}",
            f"{r.torch_ips:.0f}",
            f"{r.ratio:.2f}",
            f"{r.max_abs_diff:.1e}",
        ]
        for r in report.engines
    ]
    parts = [
        "## Serving (`bench/serve.py`)",
        f"```bash\n{report.command}\n```",
        f"{m['cpu']}, {m['cpus']} CPUs{gpu}; torch {m['torch']} ({m['torch_threads']} threads), "
        f"onnxruntime {m['onnxruntime']} ({s['ort_threads']} intra-op threads), "
        f"bentoml {m['bentoml']}, {m['date']}. "
        f"Inputs: {s['images']}.",
        f"### ONNX Runtime vs PyTorch eager ({s['device']}, {s['seconds']:g} s each, "
        f"{s['rounds']} alternating rounds)",
        table(["batch", "ORT img/s", "torch img/s", "ORT / torch", "max abs diff p"], engines),
    ]
    if report.http:
        parts += _render_http(report)
    rows = [[c.target, c.measured, _verdict(c.passed)] for c in report.checks]
    parts += ["### Targets", table(["target", "measured", "result"], rows, left=2)]
    return "\n\n".join(parts) + "\n"


def _latency(r: LoadResult) -> list[str]:
    return [f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", str(r.errors)]


def _render_http(report: Report) -> list[str]:
    s, cpus = report.settings, report.machine["cpus"]
    rows = [
        [r.server, r.endpoint, str(r.clients), f"{r.rps:.1f}", f"{r.ips:.0f}", *_latency(r)]
        for r in report.http
    ]
    note = (
        f"Closed loop: each client sends its next request as soon as the last is answered "
        f"(httpx, asyncio, keep-alive connections), {s['seconds']:g} s per row in "
        f"{s['rounds']} rounds alternating the rows of one concurrency; {s['workers']} "
        f"worker(s) per server; servers on ONNX Runtime's {s['server_provider']}; "
        f"/classify_batch sends {BATCH_IMAGES} images per request. The load generator is one "
        f"Python process on the same {cpus} CPUs as the servers: the CPU it uses is taken from "
        f"them, so absolute rates understate a server with its own cores; compare rows."
    )
    header = ["server", "endpoint", "clients", "req/s", "img/s", "p50 ms", "p99 ms", "errors"]
    return ["### HTTP service vs minimal BentoML service", note, table(header, rows, left=2)]


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
    }
    checks = engine_checks(rates) + http_checks(http, args.clients)
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
