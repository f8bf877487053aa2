"""The serving benchmark's targets and its markdown report (see bench/serve.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from bench.engines import EngineRate
from bench.loadgen import LoadResult, clients_label
from bench.servers import MINIMAL, OFF, ON

BATCH_IMAGES = 64  # images per /classify_batch request
TARGET_CLIENTS = 8  # the concurrency the serving targets are checked at
NPY_LABEL = "/classify_batch (npy)"  # the batch endpoint sent .npy bodies


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


def npy_checks(
    results: Sequence[LoadResult], clients: Sequence[int], rates: Sequence[EngineRate]
) -> list[Check]:
    """The batch endpoint with ``.npy`` bodies at least half ONNX Runtime's own images/s at
    batch :data:`BATCH_IMAGES` (the rate of the engines part, same model, same machine, same
    run); checked at :data:`TARGET_CLIENTS`, reported at the other concurrencies."""
    engine = next((r for r in rates if r.batch == BATCH_IMAGES), None)
    if engine is None:
        return []
    checks = []
    for n in clients:
        served = find(results, ON, NPY_LABEL, n)
        ratio = served.ips / engine.ort_ips if engine.ort_ips else math.nan
        checks.append(
            Check(
                f"{NPY_LABEL} ≥ 50% of ONNX Runtime's img/s at batch {BATCH_IMAGES}, "
                f"{clients_label(n)}",
                f"{served.ips:.0f} / {engine.ort_ips:.0f} img/s = {ratio:.0%}",
                ratio >= 0.5 if n == TARGET_CLIENTS else None,
            )
        )
    return checks


def http_checks(
    results: Sequence[LoadResult], clients: Sequence[int], rates: Sequence[EngineRate] = ()
) -> list[Check]:
    """All serving targets; those needing :data:`TARGET_CLIENTS` say so when it was not run."""
    if not results:
        return []
    checks = overhead_checks(results, clients) + npy_checks(results, clients, rates)
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
    generator = s.get("load_generator", "python")
    tool = "hey (Go), one request body per row" if generator == "hey" else "httpx, asyncio"
    note = (
        f"Closed loop: each client sends its next request as soon as the last is answered "
        f"({tool}, keep-alive connections), {s['seconds']:g} s per row in "
        f"{s['rounds']} rounds alternating the rows of one concurrency; {s['workers']} "
        f"worker(s) per server; servers on ONNX Runtime's {s['server_provider']}; "
        f"/classify_batch sends {BATCH_IMAGES} images per request (JSON, or a .npy file). The "
        f"load generator runs on the same {cpus} CPUs as the servers: the CPU it uses is taken "
        f"from them, so absolute rates understate a server with its own cores; compare rows."
    )
    header = ["server", "endpoint", "clients", "req/s", "img/s", "p50 ms", "p99 ms", "errors"]
    return ["### HTTP service vs minimal BentoML service", note, table(header, rows, left=2)]
