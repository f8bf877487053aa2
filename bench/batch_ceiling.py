"""How close can any HTTP server on these cores come to ONNX Runtime alone at batch 64?

Issue 9 asks the ``.npy`` batch endpoint for at least half of raw ONNX Runtime's images/s at
batch 64. This measures, in one run and in alternating rounds:

1. ONNX Runtime alone: the exported model's session, batch 64, back to back, nothing else.
2. A bare server: uvicorn (uvloop, httptools) around the service's own
   :class:`~serving.predictor.Predictor`, doing only what the endpoint cannot skip (read the
   ``.npy`` body, predict, write the JSON answer). No BentoML, no validation beyond the ``.npy``
   reader, no metrics, no guard: the ceiling for any server of this endpoint on this machine.
3. The service (``bentoml serve serving.service:ImageClassifier``) on ``/classify_batch``.

Each server runs with each of ``--workers``; ``hey`` sends the same 64-image ``.npy`` body from
``--clients`` connections on the same cores, as ``bench/serve.py`` does. If the bare server
cannot reach the target here, no implementation of the service can: the figure says what the
machine allows.

Usage::

    python bench/batch_ceiling.py [--model models/model.onnx] [--params params.yaml]
        [--workers 1,2] [--clients 8] [--seconds 6] [--rounds 2]

The bare server alone: ``RANKCAL_MODEL=models/model.onnx uvicorn bench.batch_ceiling:app``.
The report (markdown) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import onnxruntime as ort

if not __package__:  # run as ``python bench/batch_ceiling.py``: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engines import alternate
from bench.loadgen import NPY, Case, log, measure_http
from bench.report import machine, table
from bench.servers import ROOT, SERVICE, Server, free_port, start_server, wait_ready, write_params
from pipeline.model_card import INPUT_NAME, METADATA_KEY, ModelCard
from pipeline.preprocessing import to_model_input
from serving.images import InputError
from serving.npy import npy_bytes, read_npy
from serving.predictor import CPU, Predictor

BATCH = 64
TARGET = 0.5  # issue 9: the batch endpoint at >= 50% of ONNX Runtime alone at batch 64
BARE = "bare ASGI"

# --- the bare server ----------------------------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_state: dict[str, Any] = {}


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """ASGI: ``POST /classify_batch`` with a ``.npy`` body, ``GET /readyz``; nothing else.

    The model (``RANKCAL_MODEL``) is loaded at lifespan start-up and warmed up once.
    """
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        path = Path(os.environ.get("RANKCAL_MODEL", "models/model.onnx"))
        _state["predictor"] = Predictor(path, top_k=3, providers=[CPU])
        _state["predictor"].warm_up()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["method"] == "GET" and scope["path"] == "/readyz":
        status, body = 200, b"ready"
    elif scope["method"] == "POST" and scope["path"] == "/classify_batch":
        status, body = await anyio.to_thread.run_sync(_classify, b"".join(chunks))
    else:
        status, body = 404, b'{"error": "not found", "reason": "not_found"}'
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _classify(data: bytes) -> tuple[int, bytes]:
    predictor = _state["predictor"]
    try:
        images = read_npy(data)
    except InputError as err:
        return 400, json.dumps({"error": str(err), "reason": err.reason}).encode()
    try:
        out = predictor.predict(images, batch_size=BATCH)
    except ValueError as err:  # not uint8 at the model's shape
        return 400, json.dumps({"error": str(err), "reason": "bad_shape"}).encode()
    return 200, json.dumps({"predictions": predictor.records(out)}).encode()


# --- the comparison -----------------------------------------------------------------------------


def start_bare(model: Path, port: int, workers: int, folder: Path) -> Server:
    """The bare server under uvicorn with ``workers`` processes, in its own process group."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RANKCAL_MODEL=str(model.resolve()))
    argv = [
        sys.executable,
        *("-m", "uvicorn", "bench.batch_ceiling:app", "--port", str(port)),
        *("--workers", str(workers), "--loop", "uvloop", "--http", "httptools"),
        "--no-access-log",
    ]
    log_path = folder / "server.log"
    with log_path.open("wb") as sink:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(f"{BARE}, {workers} workers", f"http://127.0.0.1:{port}", process, log_path)


@contextlib.contextmanager
def servers_up(
    model: Path, params: Path, workers: Sequence[int], folder: Path
) -> Iterator[list[Server]]:
    """The bare server and the service at each worker count, all ready; stopped on exit."""
    with contextlib.ExitStack() as stack:
        started = []
        for n in workers:
            for kind in (BARE, "service"):
                sub = folder / f"{kind.split()[0]}-{n}"
                sub.mkdir()
                port = free_port()
                if kind == BARE:
                    server = start_bare(model, port, n, sub)
                else:
                    copied = write_params(params, sub / "params.yaml", port=port, workers=n)
                    server = start_server(f"service, {n} workers", SERVICE, model, copied, port)
                stack.callback(server.stop)
                started.append(server)
        for server in started:
            wait_ready(server)
            log(f"{server.name} ready at {server.url}")
        yield started


def ort_alone(
    session: ort.InferenceSession, card: ModelCard, images: np.ndarray, seconds: float, rounds: int
) -> float:
    """Images/s of the model's session (ONNX Runtime's default options) at batch 64."""
    x = to_model_input(images, card.mean, card.std)
    rate = alternate(
        {"ort": lambda: session.run(["probabilities"], {INPUT_NAME: x})}, seconds, rounds
    )
    return rate["ort"] * len(images)


@dataclass(frozen=True)
class Row:
    """One server's images/s at one concurrency, and its share of ONNX Runtime alone."""

    name: str
    clients: int
    images_per_s: float
    share: float
    errors: int


def render(ort_ips: float, rows: Sequence[Row], about: dict[str, Any]) -> str:
    """The report: ONNX Runtime's rate, then each server's, with PASS/FAIL on the target."""
    lines = [
        f"# Batch endpoint against ONNX Runtime alone (batch {BATCH}, `.npy` bodies)",
        "",
        f"Machine: {about['cpu']}, {about['cpus']} CPUs; onnxruntime {about['onnxruntime']}, "
        f"bentoml {about['bentoml']}, {about['date']}.",
        "",
        f"ONNX Runtime alone: {ort_ips:,.0f} images/s.",
        "",
        table(
            ["server", "clients", "images/s", "of ORT", "errors", f"target {TARGET:.0%}"],
            [
                [
                    r.name,
                    str(r.clients),
                    f"{r.images_per_s:,.0f}",
                    f"{r.share:.0%}",
                    str(r.errors),
                    "PASS" if r.share >= TARGET else "FAIL",
                ]
                for r in rows
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the report; 0 unless a server could not be started or answered."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/model.onnx"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="serve settings")
    p.add_argument("--workers", type=_ints, default=[1, 2], help="e.g. 1,2")
    p.add_argument("--clients", type=_ints, default=[8], help="e.g. 8,32")
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per measurement")
    p.add_argument("--rounds", type=int, default=2, help="alternations per measurement")
    args = p.parse_args(argv)
    if not args.model.is_file():
        print(f"{args.model} is missing: run `make repro` first", file=sys.stderr)
        return 2
    session = ort.InferenceSession(str(args.model), providers=[CPU])
    card = ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    # Seeded noise at the model's shape: what is timed does not depend on the pixels.
    images = np.random.default_rng(0).integers(0, 256, (BATCH, *card.image_shape), np.uint8)
    body = npy_bytes(images)
    with (
        tempfile.TemporaryDirectory() as tmp,
        servers_up(args.model, args.params, args.workers, Path(tmp)) as started,
    ):
        cases = [
            Case(s.name, "/classify_batch", s.url, [body], NPY, BATCH, label=".npy")
            for s in started
        ]
        log(f"ONNX Runtime alone, batch {BATCH}")
        ort_ips = ort_alone(session, card, images, args.seconds, args.rounds)
        results = measure_http(cases, args.clients, args.seconds, args.rounds)
    rows = [Row(r.server, r.clients, r.ips, r.ips / ort_ips, r.errors) for r in results]
    print(render(ort_ips, rows, machine("cpu")))
    return 0


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


if __name__ == "__main__":
    sys.exit(main())
