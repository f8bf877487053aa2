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
import asyncio
import contextlib
import copy
import dataclasses
import datetime
import io
import json
import math
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import torch
import yaml
from PIL import Image
from torch import nn

from pipeline.checkpoint import load_model
from pipeline.config import read_params
from pipeline.data import DataError, load_prepared
from pipeline.export import CalibratedNet
from pipeline.model_card import INPUT_NAME, METADATA_KEY, ModelCard
from pipeline.preprocessing import to_model_input

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "serving.service:ImageClassifier"
FLOOR = "bench.minimal_service:MinimalClassifier"
ON, OFF, MINIMAL = "service, batching on", "service, batching off", "minimal"
ENGINE_BATCHES = (1, 64)
BATCH_IMAGES = 64  # images per /classify_batch request
TARGET_CLIENTS = 8  # the concurrency the serving targets are checked at
READY_TIMEOUT_S = 180.0  # a busy 2-core machine needs tens of seconds to start three servers
PNG = {"Content-Type": "image/png"}
JSON = {"Content-Type": "application/json"}
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def _clients(n: int) -> str:
    return f"{n} client" if n == 1 else f"{n} clients"


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks (NumPy's default method).

    Returns:
        The percentile, NaN for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --- 1. ONNX Runtime vs PyTorch eager ----------------------------------------------------------


@dataclass(frozen=True)
class EngineRate:
    """Images per second of both engines at one batch size, and how far their outputs differ."""

    batch: int
    ort_ips: float
    torch_ips: float
    max_abs_diff: float  # largest |p_ort - p_torch| of the batch's probabilities

    @property
    def ratio(self) -> float:
        """ONNX Runtime's rate over PyTorch's."""
        return self.ort_ips / self.torch_ips


def load_engines(
    model: Path, checkpoint: Path, device: str, threads: int | None = None
) -> tuple[ort.InferenceSession, nn.Module, ModelCard]:
    """The ONNX session, and the checkpoint wrapped with the card's temperature, on ``device``.

    Args:
        model: The exported ``.onnx`` file (card in its metadata).
        checkpoint: The checkpoint it was exported from.
        device: ``cpu`` or ``cuda``.
        threads: CPU threads of both engines (torch's and ONNX Runtime's intra-op pool); None
            leaves each library's default.

    Raises:
        RuntimeError: If ``device`` is cuda and ONNX Runtime or PyTorch cannot use it.
    """
    providers = [CUDA, CPU] if device == "cuda" else [CPU]
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        torch.set_num_threads(threads)
    session = ort.InferenceSession(str(model), options, providers=providers)
    if session.get_providers()[0] != providers[0]:
        raise RuntimeError(
            f"asked for {providers[0]}, ONNX Runtime runs on {session.get_providers()}"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("asked for cuda, but PyTorch sees no CUDA device")
    card = ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    net, _ = load_model(checkpoint)
    calibrated = CalibratedNet(net, card.temperature).eval()
    # As pipeline/training.py and pipeline/inference.py do: channels-last weights and inputs.
    return session, calibrated.to(device, memory_format=torch.channels_last), card


def timed_calls(fn: Callable[[], Any], seconds: float) -> tuple[int, float]:
    """Call ``fn`` back to back for ``seconds`` (at least once): calls made, seconds taken."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls, elapsed


def alternate(fns: dict[str, Callable[[], Any]], seconds: float, rounds: int) -> dict[str, float]:
    """Calls per second of each function, timed in ``rounds`` alternating turns (ABBA...).

    Each function gets ``seconds`` in all, after one untimed warm-up turn of a quarter of that
    (at most 1 s); the order flips each round so slow drift of the machine hits all alike.
    """
    for fn in fns.values():
        timed_calls(fn, min(1.0, seconds / 4))
    totals = {name: [0, 0.0] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            calls, elapsed = timed_calls(fns[name], seconds / rounds)
            totals[name][0] += calls
            totals[name][1] += elapsed
    return {name: calls / elapsed for name, (calls, elapsed) in totals.items()}


def compare_engines(
    session: ort.InferenceSession,
    net: nn.Module,
    inputs: np.ndarray,
    *,
    seconds: float,
    rounds: int,
    batch_sizes: Sequence[int] = ENGINE_BATCHES,
) -> list[EngineRate]:
    """Images/s of ONNX Runtime and PyTorch eager on the same inputs, numpy in, numpy out.

    Args:
        session: ONNX Runtime session of the exported model (output ``probabilities``).
        net: The model in PyTorch returning ``(logits, probabilities)``, eval mode, on its device.
        inputs: Preprocessed float32 ``(N, C, H, W)``, N at least the largest batch size.
        seconds: Timed seconds per engine and batch size.
        rounds: Alternations of the two engines per batch size.
        batch_sizes: Batch sizes to time.
    """
    device = next(net.parameters()).device
    rates = []
    with torch.inference_mode():
        for batch in batch_sizes:
            x = np.ascontiguousarray(inputs[:batch])

            def run_ort(x: np.ndarray = x) -> np.ndarray:
                return session.run(["probabilities"], {INPUT_NAME: x})[0]

            def run_torch(x: np.ndarray = x) -> np.ndarray:
                t = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
                return net(t)[1].float().cpu().numpy()

            diff = float(np.max(np.abs(run_ort() - run_torch())))
            calls = alternate({"ort": run_ort, "torch": run_torch}, seconds, rounds)
            rate = EngineRate(batch, batch * calls["ort"], batch * calls["torch"], diff)
            log(f"batch {batch}: ORT {rate.ort_ips:.0f} img/s, torch {rate.torch_ips:.0f} img/s")
            rates.append(rate)
    return rates


# --- 2 and 3. HTTP under closed-loop load ------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One server endpoint under load: the request bodies (cycled) and images per request."""

    server: str
    endpoint: str
    url: str
    bodies: Sequence[bytes]
    headers: dict[str, str]
    images_per_request: int = 1


@dataclass
class Tally:
    """Successful requests' latencies (s) and failed requests over ``seconds`` of load."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def merge(self, other: Tally) -> None:
        """Add another measurement of the same case."""
        self.latencies += other.latencies
        self.errors += other.errors
        self.seconds += other.seconds


@dataclass(frozen=True)
class LoadResult:
    """Throughput and latency of one case at one concurrency."""

    server: str
    endpoint: str
    clients: int
    requests: int  # answered 200 within the timed window
    errors: int  # other statuses and transport errors
    images: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.requests / self.seconds

    @property
    def ips(self) -> float:
        """Images per second of successful requests."""
        return self.images / self.seconds

    @classmethod
    def of(cls, case: Case, clients: int, tally: Tally) -> LoadResult:
        """Summarise a tally of ``case``."""
        n = len(tally.latencies)
        return cls(
            server=case.server,
            endpoint=case.endpoint,
            clients=clients,
            requests=n,
            errors=tally.errors,
            images=n * case.images_per_request,
            seconds=tally.seconds,
            p50_ms=1e3 * percentile(tally.latencies, 50),
            p99_ms=1e3 * percentile(tally.latencies, 99),
        )


async def _client(
    client: httpx.AsyncClient, case: Case, first: int, window: tuple[float, float], tally: Tally
) -> None:
    """Send requests back to back until the window closes; count those that end inside it."""
    start_at, stop_at = window
    i = first
    while (start := time.perf_counter()) < stop_at:
        body = case.bodies[i % len(case.bodies)]
        i += 1
        try:
            response = await client.post(case.endpoint, content=body, headers=case.headers)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        end = time.perf_counter()
        if start_at <= end <= stop_at:
            if ok:
                tally.latencies.append(end - start)
            else:
                tally.errors += 1


async def _load(case: Case, clients: int, seconds: float, warmup_s: float) -> Tally:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=case.url, limits=limits, timeout=60) as client:
        start_at = time.perf_counter() + warmup_s
        window = (start_at, start_at + seconds)
        tally = Tally(seconds=seconds)
        spread = max(1, len(case.bodies) // clients)  # clients start at different bodies
        await asyncio.gather(
            *(_client(client, case, k * spread, window, tally) for k in range(clients))
        )
    return tally


def run_load(case: Case, clients: int, seconds: float, warmup_s: float = 0.5) -> Tally:
    """Closed loop: ``clients`` keep-alive connections, each sending its next request as soon as
    the last is answered, for ``warmup_s`` untimed then ``seconds`` timed."""
    return asyncio.run(_load(case, clients, seconds, warmup_s))


def measure_http(
    cases: Sequence[Case], clients: Sequence[int], seconds: float, rounds: int
) -> list[LoadResult]:
    """Every case at every concurrency for ``seconds``, split into rounds alternating the cases
    (order flipped each round) so machine noise hits them alike."""
    results = []
    per_round = seconds / rounds
    for n in clients:
        log(f"{len(cases)} cases at {_clients(n)}, {rounds} rounds of {per_round:g} s each")
        tallies = [Tally() for _ in cases]
        for r in range(rounds):
            order = range(len(cases)) if r % 2 == 0 else reversed(range(len(cases)))
            for i in order:
                tallies[i].merge(run_load(cases[i], n, per_round, min(0.5, per_round / 4)))
        for case, tally in zip(cases, tallies, strict=True):
            result = LoadResult.of(case, n, tally)
            log(
                f"{case.server} {case.endpoint}, {_clients(n)}: {result.rps:.0f} req/s, "
                f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, {result.errors} errors"
            )
            results.append(result)
    return results


# --- the servers -------------------------------------------------------------------------------


@dataclass
class Server:
    """A ``bentoml serve`` subprocess in its own process group, with its log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate the server's process group and its workers; kill whatever lingers.

        BentoML's arbiter starts each worker in a process group of its own, so the workers are
        collected first and killed separately if the arbiter did not stop them.
        """
        workers: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            workers = psutil.Process(self.process.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for worker in psutil.wait_procs(workers, timeout=5)[1]:
            with contextlib.suppress(psutil.Error):
                worker.kill()


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_params(source: Path, dest: Path, **serve: Any) -> Path:
    """A copy of the params file ``source`` with ``serve`` keys overridden."""
    params = copy.deepcopy(read_params(source))
    params["serve"].update(serve)
    with dest.open("w") as fh:
        yaml.safe_dump(params, fh)
    return dest


def start_server(name: str, target: str, model: Path, params: Path, port: int) -> Server:
    """``bentoml serve target`` with the model, params and a BentoML home beside ``params``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "PROMETHEUS_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        RANKCAL_MODEL=str(model.resolve()),
        RANKCAL_PARAMS=str(params.resolve()),
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_HOME=str(params.parent / "bentoml_home"),
    )
    argv = [str(Path(sys.executable).parent / "bentoml"), "serve", target]
    log_path = params.parent / "server.log"
    with log_path.open("wb") as sink:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(name, f"http://127.0.0.1:{port}", process, log_path)


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S) -> None:
    """Wait for ``/readyz`` to answer 200.

    Raises:
        RuntimeError: If the server exits or is not ready in ``timeout`` seconds (with its log).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s:\n{server.log_tail()}")


@contextlib.contextmanager
def running_servers(
    model: Path, params: Path, workers: int, folder: Path
) -> Iterator[dict[str, Server]]:
    """The service with batching on and off and the minimal service, all ready; stopped on exit
    (exceptions and Ctrl-C included)."""
    specs = {ON: (SERVICE, True), OFF: (SERVICE, False), MINIMAL: (FLOOR, False)}
    with contextlib.ExitStack() as stack:
        servers = {}
        for i, (name, (target, batching)) in enumerate(specs.items()):
            (folder / str(i)).mkdir()
            port = free_port()
            copied = write_params(
                params,
                folder / str(i) / "params.yaml",
                port=port,
                workers=workers,
                batching=batching,
            )
            servers[name] = start_server(name, target, model, copied, port)
            stack.callback(servers[name].stop)
        for server in servers.values():
            wait_ready(server)
            log(f"{server.name} ready at {server.url}")
        yield servers


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


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 ``(H, W, C)`` image, C of 1 or 3, as a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, "PNG")
    return buffer.getvalue()


def batch_body(images: np.ndarray) -> bytes:
    """A ``/classify_batch`` request body: ``{"images": N x H x W (x C)}`` as uint8 integers."""
    arr = images[..., 0] if images.shape[3] == 1 else images
    return json.dumps({"images": arr.tolist()}).encode()


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


def served_provider(url: str) -> str:
    """The ONNX Runtime provider the service runs on, from ``rankcal_model_info`` in /metrics."""
    found = re.search(
        r'rankcal_model_info\{[^}]*provider="([^"]+)"', httpx.get(f"{url}/metrics").text
    )
    return found.group(1) if found else "unknown"


def probe(case: Case) -> None:
    """Send one request of ``case``.

    Raises:
        RuntimeError: If it is not answered 200 (a broken set-up, not a slow one).
    """
    response = httpx.post(case.url + case.endpoint, content=case.bodies[0], headers=case.headers)
    if response.status_code != 200:
        raise RuntimeError(
            f"{case.server} {case.endpoint} answered {response.status_code}: {response.text}"
        )


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
                    f"{server}: /classify ≥ 80% of minimal's img/s, {_clients(n)}",
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
                f"{server}: /classify p99 ≤ 3 × p50, {_clients(n)}",
                f"p99 {single.p99_ms:.1f} ms, p50 {single.p50_ms:.1f} ms = {tail:.1f}×",
                tail <= 3,
            )
        )
        gain = batch.ips / single.ips if single.ips else math.nan
        checks.append(
            Check(
                f"/classify_batch img/s ≥ 10 × /classify ({server}), {_clients(n)}",
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
    return [*checks, Check(f"targets at {_clients(TARGET_CLIENTS)}", "not measured", None)]


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
