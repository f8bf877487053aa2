"""Closed-loop HTTP load: N clients, each sending its next request as soon as the last is answered.

The request bodies (PNG files, ``/classify_batch`` JSON or ``.npy``), the load itself (``hey``
where it is installed, else httpx on asyncio, keep-alive connections), its tallies and their summary
(throughput, p50 and p99 latency), and the progress lines the benchmark prints on stderr.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image

from serving.npy import MEDIA_TYPE

HEY = shutil.which("hey")
PNG = {"Content-Type": "image/png"}
JSON = {"Content-Type": "application/json"}
NPY = {"Content-Type": MEDIA_TYPE}


def clients_label(n: int) -> str:
    """``1 client``, ``8 clients``."""
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


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 ``(H, W, C)`` image, C of 1 or 3, as a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, "PNG")
    return buffer.getvalue()


def batch_body(images: np.ndarray) -> bytes:
    """A ``/classify_batch`` request body: ``{"images": N x H x W (x C)}`` as uint8 integers."""
    arr = images[..., 0] if images.shape[3] == 1 else images
    return json.dumps({"images": arr.tolist()}).encode()


@dataclass(frozen=True)
class Case:
    """One server endpoint under load: the request bodies (cycled) and images per request."""

    server: str
    endpoint: str
    url: str
    bodies: Sequence[bytes]
    headers: dict[str, str]
    images_per_request: int = 1
    label: str | None = None  # what the results call it; the endpoint by default


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
            endpoint=case.label or case.endpoint,
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


def run_hey(case: Case, clients: int, seconds: float, warmup_s: float) -> Tally:
    """The same closed loop driven by ``hey`` (a Go load generator), one body per run.

    ``hey -o csv`` lists every answered request with its start offset, latency and status;
    the first ``warmup_s`` seconds are dropped. A transport error leaves no row, so only answers
    with other statuses count as errors here.
    """
    with tempfile.NamedTemporaryFile(suffix=".body") as body:
        body.write(case.bodies[0])
        body.flush()
        command = [
            HEY,
            *("-z", f"{warmup_s + seconds:g}s", "-c", str(clients), "-m", "POST"),
            *("-T", case.headers.get("Content-Type", "application/octet-stream")),
            *("-D", body.name, "-o", "csv", f"{case.url}{case.endpoint}"),
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    tally = Tally(seconds=seconds)
    for row in csv.DictReader(io.StringIO(out.stdout)):
        if float(row["offset"]) < warmup_s:
            continue
        if row["status-code"] == "200":
            tally.latencies.append(float(row["response-time"]))
        else:
            tally.errors += 1
    return tally


def run_load(case: Case, clients: int, seconds: float, warmup_s: float = 0.5) -> Tally:
    """Closed loop: ``clients`` keep-alive connections, each sending its next request as soon as
    the last is answered, for ``warmup_s`` untimed then ``seconds`` timed.

    With ``hey`` installed (``make setup`` installs Debian's package) it drives the load: a
    Python generator on the same cores measures itself (it reached 40% of the rate ``hey``
    measured from the same server). Without it, this module's asyncio generator does, with a
    warning.
    """
    if HEY is not None:
        return run_hey(case, clients, seconds, warmup_s)
    log("hey not found: measuring with the Python load generator, which under-reports")
    return asyncio.run(_load(case, clients, seconds, warmup_s))


def measure_http(
    cases: Sequence[Case], clients: Sequence[int], seconds: float, rounds: int
) -> list[LoadResult]:
    """Every case at every concurrency for ``seconds``, split into rounds alternating the cases
    (order flipped each round) so machine noise hits them alike."""
    results = []
    per_round = seconds / rounds
    for n in clients:
        log(f"{len(cases)} cases at {clients_label(n)}, {rounds} rounds of {per_round:g} s each")
        tallies = [Tally() for _ in cases]
        for r in range(rounds):
            order = range(len(cases)) if r % 2 == 0 else reversed(range(len(cases)))
            for i in order:
                tallies[i].merge(run_load(cases[i], n, per_round, min(0.5, per_round / 4)))
        for case, tally in zip(cases, tallies, strict=True):
            result = LoadResult.of(case, n, tally)
            log(
                f"{case.server} {case.endpoint}, {clients_label(n)}: {result.rps:.0f} req/s, "
                f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, {result.errors} errors"
            )
            results.append(result)
    return results
