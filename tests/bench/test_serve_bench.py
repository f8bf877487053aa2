"""bench/serve.py and its modules in miniature: statistics, engine comparison, servers, load.

Durations are tiny and nothing here looks at a speed: the numbers only have to be sane.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from bench import engines, loadgen, report, serve, servers
from pipeline.checkpoint import save_checkpoint
from pipeline.export import export_onnx
from pipeline.models import build_model
from pipeline.preprocessing import to_model_input
from tests.conftest import require_hey
from tests.serving import conftest as serving
from tests.serving.conftest import ROOT, SIZE, ExportedModel, png_bytes, quadrant_images

# The serving tests' trained, exported toy model (session-scoped, built once for this module).
exported_model = serving.exported_model


@dataclass(frozen=True)
class ModelPair:
    """An untrained toy model as a checkpoint and as the ONNX export of the same weights."""

    onnx: Path
    checkpoint: Path


@pytest.fixture(scope="module")
def model_pair(
    exported_model: ExportedModel, tmp_path_factory: pytest.TempPathFactory
) -> ModelPair:
    """small_cnn with seeded random weights, saved and exported with the toy model's card."""
    torch.manual_seed(1)
    card = exported_model.card
    net = build_model("small_cnn", num_classes=card.num_classes, in_channels=1).eval()
    folder = tmp_path_factory.mktemp("pair")
    meta = {"arch": "small_cnn", "num_classes": card.num_classes, "image_shape": [SIZE, SIZE, 1]}
    save_checkpoint(folder / "model.pt", net, meta=meta, epoch=0)
    export_onnx(net, card, folder / "model.onnx")
    return ModelPair(folder / "model.onnx", folder / "model.pt")


def test_percentile_matches_hand_computed_values() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # sorted: 1 2 3 4, positions 0..3
    assert loadgen.percentile(values, 0) == 1.0
    assert loadgen.percentile(values, 50) == 2.5  # position 1.5
    assert loadgen.percentile(values, 99) == pytest.approx(3.97)  # position 2.97
    assert loadgen.percentile(values, 100) == 4.0
    assert loadgen.percentile([7.0], 99) == 7.0
    assert np.isnan(loadgen.percentile([], 50))
    assert loadgen.percentile(values, 90) == pytest.approx(np.percentile(values, 90))
    with pytest.raises(ValueError, match="got 101"):
        loadgen.percentile(values, 101)


def test_engines_compute_the_same_and_give_positive_rates(model_pair: ModelPair) -> None:
    session, net, card = engines.load_engines(model_pair.onnx, model_pair.checkpoint, "cpu")
    images, _ = quadrant_images(8)
    x = to_model_input(images, card.mean, card.std)
    rates = engines.compare_engines(session, net, x, seconds=0.1, rounds=2, batch_sizes=(1, 8))
    assert [r.batch for r in rates] == [1, 8]
    for rate in rates:
        assert rate.ort_ips > 0 and rate.torch_ips > 0
        assert rate.ratio == rate.ort_ips / rate.torch_ips
        assert rate.max_abs_diff < 1e-5  # same weights, same temperature: same probabilities


def test_load_images_falls_back_to_synthetic_at_the_model_shape(tmp_path: Path) -> None:
    images, source = serve.load_images(tmp_path / "absent", (SIZE, SIZE, 1), 5)
    assert images.shape == (5, SIZE, SIZE, 1) and images.dtype == np.uint8
    assert source.startswith("synthetic")


def test_checks_pass_and_fail_on_the_targets() -> None:
    def result(
        server: str, endpoint: str, images: int, p50: float, p99: float
    ) -> loadgen.LoadResult:
        return loadgen.LoadResult(server, endpoint, 8, images, 0, images, 1.0, p50, p99)

    results = [
        result(servers.ON, "/classify", 90, 10, 20),  # 90% of the floor, tail 2x
        result(servers.OFF, "/classify", 70, 10, 40),  # 70% of the floor, tail 4x
        result(servers.ON, "/classify_batch", 1000, 50, 60),  # 11x ON, 14x OFF
        result(servers.ON, report.NPY_LABEL, 2000, 20, 30),
        result(servers.MINIMAL, "/classify", 100, 5, 6),
    ]
    ort = [engines.EngineRate(1, 100.0, 10.0, 0.0), engines.EngineRate(64, 3900.0, 100.0, 0.0)]
    verdicts = {c.target: c.passed for c in report.http_checks(results, [8], ort)}
    assert verdicts == {
        "/classify_batch (npy) ≥ 50% of ONNX Runtime's img/s at batch 64, 8 clients": True,
        "service, batching on: /classify ≥ 80% of minimal's img/s, 8 clients": True,
        "service, batching off: /classify ≥ 80% of minimal's img/s, 8 clients": False,
        "service, batching on: /classify p99 ≤ 3 × p50, 8 clients": True,
        "service, batching off: /classify p99 ≤ 3 × p50, 8 clients": False,
        "/classify_batch img/s ≥ 10 × /classify (service, batching on), 8 clients": True,
        "/classify_batch img/s ≥ 10 × /classify (service, batching off), 8 clients": True,
    }
    ort[1] = engines.EngineRate(64, 4100.0, 100.0, 0.0)  # 2000 / 4100 = 49%
    verdicts = {c.target: c.passed for c in report.http_checks(results, [8], ort)}
    assert not verdicts[
        "/classify_batch (npy) ≥ 50% of ONNX Runtime's img/s at batch 64, 8 clients"
    ]
    rates = [engines.EngineRate(1, 300.0, 100.0, 0.0), engines.EngineRate(64, 200.0, 100.0, 0.0)]
    assert [c.passed for c in report.engine_checks(rates)] == [True, False]


@pytest.fixture(scope="module")
def minimal_server(
    exported_model: ExportedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[servers.Server]:
    """bench/minimal_service.py on the toy model, one worker, started and stopped by bench."""
    folder = tmp_path_factory.mktemp("minimal")
    port = serving.free_port()
    params = servers.write_params(
        ROOT / "params.yaml", folder / "params.yaml", port=port, workers=1
    )
    server = servers.start_server("minimal", servers.FLOOR, exported_model.path, params, port)
    try:
        servers.wait_ready(server, timeout=serving.READY_TIMEOUT_S)
        workers = psutil.Process(server.process.pid).children(recursive=True)
        yield server
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert workers and not any(w.is_running() and w.status() != "zombie" for w in workers)


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["hey", "python"])
def test_load_generator_against_the_minimal_service(
    minimal_server: servers.Server, generator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if generator == "hey":
        require_hey()
    if generator == "python":
        monkeypatch.setattr(loadgen, "HEY", None)
    images, _ = quadrant_images(16, seed=3)
    pngs = [png_bytes(image) for image in images]
    case = loadgen.Case("minimal", "/classify", minimal_server.url, pngs, loadgen.PNG)
    servers.probe(case)
    tally = loadgen.run_load(case, clients=4, seconds=1.0, warmup_s=0.2)
    result = loadgen.LoadResult.of(case, 4, tally)
    assert result.errors == 0
    assert result.requests > 4 and result.images == result.requests
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.rps == pytest.approx(result.requests / 1.0)


@pytest.mark.slow
def test_measure_http_alternates_cases_and_counts_images(minimal_server: servers.Server) -> None:
    images, _ = quadrant_images(4, seed=4)
    pngs = [png_bytes(image) for image in images]
    cases = [
        loadgen.Case("minimal", "/echo", minimal_server.url, pngs, loadgen.PNG),
        loadgen.Case("minimal", "/classify", minimal_server.url, pngs, loadgen.PNG, 2),
    ]
    results = loadgen.measure_http(cases, clients=[1, 2], seconds=0.4, rounds=2)
    assert [(r.endpoint, r.clients) for r in results] == [
        ("/echo", 1),
        ("/classify", 1),
        ("/echo", 2),
        ("/classify", 2),
    ]
    for r in results:
        assert r.errors == 0 and r.requests > 0 and r.seconds == pytest.approx(0.4)
        assert r.p50_ms <= r.p99_ms
    assert results[1].images == 2 * results[1].requests


def test_main_without_http_prints_the_report_and_writes_json(
    model_pair: ModelPair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--model", str(model_pair.onnx), "--checkpoint", str(model_pair.checkpoint)]
    argv += ["--data", str(tmp_path), "--seconds", "0.1", "--rounds", "1", "--skip-http"]
    assert serve.main([*argv, "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "### ONNX Runtime vs PyTorch eager" in report
    assert "ORT ≥ 2.5× torch eager, batch 64" in report
    assert "### HTTP" not in report
    data = json.loads(out.read_text())
    assert [row["batch"] for row in data["engines"]] == [1, 64]
    assert all(row["ratio"] > 0 for row in data["engines"])
    assert data["http"] == [] and data["settings"]["images"].startswith("synthetic")


@pytest.mark.slow
def test_main_measures_all_three_servers(
    model_pair: ModelPair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A generous latency budget: a busy machine must not turn adaptive batching into 503s.
    params = servers.write_params(
        ROOT / "params.yaml", tmp_path / "params.yaml", max_latency_ms=10_000
    )
    out = tmp_path / "bench.json"
    argv = ["--model", str(model_pair.onnx), "--checkpoint", str(model_pair.checkpoint)]
    argv += ["--params", str(params), "--data", str(tmp_path), "--images", "128"]
    argv += ["--seconds", "0.3", "--rounds", "1", "--clients", "8", "--out", str(out)]
    assert serve.main(argv) == 0
    printed = capsys.readouterr().out
    assert "### HTTP service vs minimal BentoML service" in printed
    data = json.loads(out.read_text())
    rows = {(r["server"], r["endpoint"], r["clients"]): r for r in data["http"]}
    assert len(rows) == 6
    for row in rows.values():
        assert row["errors"] == 0 and row["requests"] > 0
        assert row["p50_ms"] <= row["p99_ms"]
    batch = rows[(servers.ON, "/classify_batch", 8)]
    assert batch["images"] == serve.BATCH_IMAGES * batch["requests"]
    npy = rows[(servers.ON, report.NPY_LABEL, 8)]
    assert npy["images"] == serve.BATCH_IMAGES * npy["requests"]
    assert data["settings"]["server_provider"].endswith("ExecutionProvider")
    judged = [c for c in data["checks"] if c["passed"] is not None]
    # engines; overhead at 8 clients; npy against ORT; tail and batch gain
    assert len(judged) == 2 + 2 + 1 + 4


def test_a_server_whose_port_was_taken_is_started_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[str, int]] = []
    stopped: list[int] = []

    class Fake:
        def __init__(self, name: str, port: int) -> None:
            self.name, self.url, self.port = name, f"http://127.0.0.1:{port}", port

        def stop(self) -> None:
            stopped.append(self.port)

    def fake_start(name: str, target: str, model: Path, params: Path, port: int) -> Fake:
        started.append((name, port))
        return Fake(name, port)

    def fake_ready(server: Fake) -> None:
        # The second server's first start finds its port taken; every other start works.
        if [n for n, _ in started].count(server.name) == 1 and server.name == servers.OFF:
            raise RuntimeError(f"{server.name} exited with 1:\nOSError: Address already in use")

    monkeypatch.setattr(servers, "start_server", fake_start)
    monkeypatch.setattr(servers, "wait_ready", fake_ready)
    params = ROOT / "params.yaml"
    with servers.running_servers(tmp_path / "m.onnx", params, 1, tmp_path) as running:
        assert [n for n, _ in started] == [servers.ON, servers.OFF, servers.MINIMAL, servers.OFF]
        assert running[servers.OFF].port == started[-1][1]
        assert stopped == [started[1][1]]  # the failed start, stopped before its retry
    assert sorted(stopped) == sorted([started[1][1], *(p for _, p in started[:1] + started[2:])])

    # Any other failure is not retried.
    def broken(server: Fake) -> None:
        raise RuntimeError(f"{server.name} exited with 1:\nImportError: no module")

    started.clear()
    monkeypatch.setattr(servers, "wait_ready", broken)
    (tmp_path / "b").mkdir()
    with (
        pytest.raises(RuntimeError, match="ImportError"),
        servers.running_servers(tmp_path / "m.onnx", params, 1, tmp_path / "b"),
    ):
        pass
    assert len(started) == 3
