"""bench/batch_ceiling.py: the bare server answers as the service's predictor does, the report
judges the target, and the whole comparison runs in miniature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import batch_ceiling
from bench.servers import write_params
from serving.npy import npy_bytes
from serving.predictor import CPU, Predictor
from tests.conftest import require_hey
from tests.serving import conftest as serving
from tests.serving.conftest import ROOT, ExportedModel, quadrant_images

exported_model = serving.exported_model


async def _call(scope: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the ASGI app on ``scope`` with ``messages`` to receive; what it sent."""
    inbox, sent = list(messages), []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await batch_ceiling.app(scope, receive, send)
    return sent


def _post(path: str, body: bytes, method: str = "POST") -> dict[str, Any]:
    import anyio

    scope = {"type": "http", "method": method, "path": path}
    sent = anyio.run(_call, scope, [{"type": "http.request", "body": body}])
    return {"status": sent[0]["status"], "body": sent[1]["body"]}


def test_bare_server_answers_as_the_predictor_and_refuses_bad_bodies(
    exported_model: ExportedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio

    monkeypatch.setenv("RANKCAL_MODEL", str(exported_model.path))
    monkeypatch.setattr(batch_ceiling, "_state", {})
    lifespan = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = anyio.run(_call, {"type": "lifespan"}, lifespan)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    images, _ = quadrant_images(5, seed=2)
    answer = _post("/classify_batch", npy_bytes(images))
    assert answer["status"] == 200
    predictor = Predictor(exported_model.path, top_k=3, providers=[CPU])
    expected = predictor.records(predictor.predict(images, batch_size=64))
    assert json.loads(answer["body"]) == {"predictions": expected}

    not_npy = _post("/classify_batch", b"\x80\x04K\x01.")  # a pickle
    assert not_npy["status"] == 400 and json.loads(not_npy["body"])["reason"]
    wrong_shape = _post("/classify_batch", npy_bytes(images[:, :4]))
    assert wrong_shape["status"] == 400
    assert json.loads(wrong_shape["body"])["reason"] == "bad_shape"
    assert _post("/readyz", b"", method="GET")["status"] == 200
    assert _post("/classify", b"")["status"] == 404


def test_report_judges_each_row_against_half_of_onnx_runtime() -> None:
    rows = [
        batch_ceiling.Row("bare ASGI, 2 workers", 8, 26_000.0, 26_000.0 / 50_000.0, 0),
        batch_ceiling.Row("service, 2 workers", 8, 16_000.0, 16_000.0 / 50_000.0, 1),
    ]
    about = {"cpu": "test CPU", "cpus": 2, "onnxruntime": "x", "bentoml": "y", "date": "d"}
    text = batch_ceiling.render(50_000.0, rows, about)
    assert "ONNX Runtime alone: 50,000 images/s." in text
    assert "| bare ASGI, 2 workers | 8 | 26,000 | 52% | 0 | PASS |" in text
    assert "| service, 2 workers | 8 | 16,000 | 32% | 1 | FAIL |" in text


def test_missing_model_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert batch_ceiling.main(["--model", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx is missing: run `make repro` first" in capsys.readouterr().err


@pytest.mark.slow
def test_main_measures_ort_the_bare_server_and_the_service(
    exported_model: ExportedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_hey()
    params = write_params(ROOT / "params.yaml", tmp_path / "params.yaml")
    argv = ["--model", str(exported_model.path), "--params", str(params), "--workers", "1"]
    argv += ["--clients", "2", "--seconds", "0.4", "--rounds", "1"]
    assert batch_ceiling.main(argv) == 0
    report = capsys.readouterr().out
    rows = [
        line for line in report.splitlines() if line.startswith("| bare") or "| service" in line
    ]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "2" and float(cells[2].replace(",", "")) > 0
        assert cells[4] == "0"  # no errors
    ort = float(report.split("ONNX Runtime alone: ")[1].split(" ")[0].replace(",", ""))
    assert ort > 0 and np.isfinite(ort)
