"""The service end to end: the serve image's CMD under ``bentoml serve``, real HTTP, /metrics.

The module's service runs exactly the command and environment of the Dockerfile's ``serve``
target (model and params pointed at test files) with torch made unimportable, as in the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import html
import importlib
import io
import json
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
from PIL import Image

from pipeline.config import load_section, read_params
from pipeline.images import fit_image
from pipeline.input_stats import STATISTICS as INPUT_STATISTICS
from pipeline.model_card import INPUT_NAME
from pipeline.preprocessing import to_model_input
from serving import client
from serving.index_page import ROUTES
from serving.npy import npy_bytes
from serving.predictor import execution_providers
from tests.serving.conftest import (
    CLASS_NAMES,
    READY_TIMEOUT_S,
    ROOT,
    SERVICE,
    SIZE,
    ExportedModel,
    Metrics,
    RunningService,
    free_port,
    no_torch_dir,
    png_bytes,
    quadrant_images,
    run_service,
    serve_argv,
    service_env,
    serving,
    write_params,
)
from tests.serving.test_images import png_with_header_size
from tests.serving.test_npy import npy_pickled, npy_shape, npy_version
from tests.serving.test_prometheus_rules import PROMTOOL, needs_promtool

DOCKERFILE = ROOT / "Dockerfile"
# Limits of the test service, small enough to trip with small payloads.
LIMITS = {"max_request_bytes": 65536, "max_image_pixels": 4096, "max_batch_items": 16}


# --- the Dockerfile, read without a Docker daemon ----------------------------------------------


@dataclass
class Stage:
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        pairs = [token.split("=", 1) for args in self.args("ENV") for token in shlex.split(args)]
        return dict(pairs)  # type: ignore[arg-type]

    def copies(self) -> list[tuple[list[str], str]]:
        out = []
        for args in self.args("COPY"):
            tokens = [t for t in shlex.split(args) if not t.startswith("--")]
            out.append((tokens[:-1], tokens[-1]))
        return out


def dockerfile_stages() -> dict[str, Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            current = stages.setdefault(args.split()[-1], Stage(args.split()[-1]))
        if current is not None:
            current.instructions.append((keyword, args))
    return stages


def serve_stage() -> Stage:
    return dockerfile_stages()["serve"]


# --- helpers -----------------------------------------------------------------------------------


def offline(model: ExportedModel, images: list[np.ndarray]) -> np.ndarray:
    """Probabilities from ONNX Runtime directly, with the data stage's and evaluation's
    preprocessing."""
    height, width, channels = model.card.image_shape
    fitted = np.stack(
        [fit_image(im, (height, width), channels, model.card.resize) for im in images]
    )
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    x = to_model_input(fitted, model.card.mean, model.card.std)
    return session.run(["probabilities"], {INPUT_NAME: x})[0]


def assert_matches(prediction: dict[str, Any], probs: np.ndarray, model: ExportedModel) -> None:
    assert prediction["class_index"] == int(probs.argmax())
    assert prediction["class_name"] == CLASS_NAMES[int(probs.argmax())]
    assert prediction["confidence"] == pytest.approx(float(probs.max()), rel=1e-5)
    assert prediction["is_ood"] == bool(probs.max() < model.card.ood_threshold)
    assert prediction["model_version"] == model.card.model_version
    p = probs.astype(np.float64)
    p = p[p > 0]  # 0 log 0 = 0
    assert prediction["entropy"] == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-4, abs=1e-6)
    top = [(e["class_index"], e["probability"]) for e in prediction["top_k"]]
    assert [i for i, _ in top] == list(np.argsort(-probs, kind="stable")[:3])
    assert [v for _, v in top] == pytest.approx([float(probs[i]) for i, _ in top], rel=1e-5)


def post_image(url: str, data: bytes, media_type: str = "image/png") -> httpx.Response:
    return httpx.post(f"{url}/classify", content=data, headers={"Content-Type": media_type})


def sample_images(n: int, seed: int) -> list[np.ndarray]:
    images, _ = quadrant_images(n, seed=seed)
    return list(images)


# --- the service as the serve image runs it ----------------------------------------------------


@pytest.fixture(scope="module")
def service(
    exported_model: ExportedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """One worker from the serve target's CMD and ENV, without torch."""
    tmp = tmp_path_factory.mktemp("service")
    port = free_port()
    # A generous latency budget: a busy CI machine must not turn batching into 503s.
    params = write_params(
        tmp / "params.yaml", port=port, workers=1, max_latency_ms=10_000, **LIMITS
    )
    stage = serve_stage()
    env = {**service_env(exported_model.path, params, [no_torch_dir(tmp)]), **stage.env()}
    env.update(
        RANKCAL_MODEL=str(exported_model.path),
        RANKCAL_PARAMS=str(params),
        BENTOML_HOME=str(tmp / "bentoml_home"),
    )
    cmd = json.loads(stage.args("CMD")[-1])
    with run_service(cmd, env, port, tmp / "service.log") as running:
        yield running


def active_provider(model: ExportedModel) -> str:
    """The provider the service should end up on here: CUDA where it loads, else the CPU."""
    session = ort.InferenceSession(str(model.path), providers=execution_providers())
    return session.get_providers()[0]


def test_probes(service: RunningService, exported_model: ExportedModel) -> None:
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    assert httpx.get(f"{service.url}/livez").status_code == 200
    log = service.log_text()
    assert f"on {active_provider(exported_model)}" in log  # the active provider, logged at start
    assert "warm-up batch done" in log


def test_image_predictions_match_offline_onnx(
    service: RunningService, exported_model: ExportedModel
) -> None:
    grey = sample_images(4, seed=11)
    rgb = [np.repeat(np.repeat(np.repeat(im, 3, axis=2), 2, axis=0), 2, axis=1) for im in grey]
    rgba = [np.concatenate([im, np.full_like(im[..., :1], 255)], axis=2) for im in rgb]
    for images in (grey, rgb):
        expected = offline(exported_model, images)
        for image, probs in zip(images, expected, strict=True):
            response = post_image(service.url, png_bytes(image))
            assert response.status_code == 200, response.text
            assert_matches(response.json(), probs, exported_model)
    expected = offline(exported_model, rgb)  # opaque RGBA = RGB
    for image, probs in zip(rgba, expected, strict=True):
        assert_matches(post_image(service.url, png_bytes(image)).json(), probs, exported_model)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    service: RunningService, exported_model: ExportedModel
) -> None:
    images = sample_images(32, seed=12)
    expected = offline(exported_model, images)
    bodies = [png_bytes(im) for im in images]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            return await asyncio.gather(
                *[
                    client.post("/classify", content=b, headers={"Content-Type": "image/png"})
                    for b in bodies
                ]
            )

    # Whether BentoML joins requests depends on how they arrive: on a machine busy with other
    # work a burst can reach it one by one. Up to three bursts; every answer is checked in each,
    # and batching must have joined requests in one of them.
    name = "bentoml_service_adaptive_batch_size"
    for _ in range(3):
        before = Metrics.scrape(service.url)
        responses = asyncio.run(send_all())
        for response, probs in zip(responses, expected, strict=True):
            assert response.status_code == 200, response.text
            assert_matches(response.json(), probs, exported_model)
        after = Metrics.scrape(service.url)
        calls = after.get(f"{name}_count", method_name="classify") - before.get(
            f"{name}_count", method_name="classify"
        )
        singles = after.get(f"{name}_bucket", method_name="classify", le="1.0") - before.get(
            f"{name}_bucket", method_name="classify", le="1.0"
        )
        assert 0 < calls <= len(images)
        if calls < len(images):  # adaptive batching joined some requests
            assert singles < calls
            return
    pytest.fail("adaptive batching joined no requests in three bursts of 32")


def test_batch_endpoint_matches_offline_onnx(
    service: RunningService, exported_model: ExportedModel
) -> None:
    images = np.stack(sample_images(6, seed=13))
    expected = offline(exported_model, list(images))
    rgb = np.repeat(images, 3, axis=3)
    as_json = [{"json": {"images": a.tolist()}} for a in (images[..., 0], images / 255.0, rgb)]
    as_npy = [
        {"content": npy_bytes(a), "headers": {"Content-Type": NPY}}
        for a in (images, images[..., 0], (images / 255.0).astype(np.float32), rgb.astype(">u2"))
    ]
    for request in [*as_json, *as_npy]:
        response = httpx.post(f"{service.url}/classify_batch", **request)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        predictions = response.json()["predictions"]
        assert len(predictions) == len(images)
        for prediction, probs in zip(predictions, expected, strict=True):
            assert_matches(prediction, probs, exported_model)


def test_the_python_client_sends_npy_and_gets_the_offline_answers(
    service: RunningService, exported_model: ExportedModel, tmp_path: Path
) -> None:
    images = np.stack(sample_images(5, seed=15))
    expected = offline(exported_model, list(images))
    for prediction, probs in zip(
        client.classify_batch(images, url=service.url), expected, strict=True
    ):
        assert_matches(prediction, probs, exported_model)
    path = tmp_path / "one.png"
    path.write_bytes(png_bytes(images[0]))
    assert_matches(client.classify(path, url=service.url), expected[0], exported_model)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        client.classify_batch(images[:, :-1], url=service.url)
    assert refused.value.response.json()["reason"] == "bad_shape"


@needs_promtool
def test_a_live_scrape_passes_promtool_check_metrics(service: RunningService) -> None:
    """Prometheus' own linter on what the service exports after traffic and a refusal (only
    histograms may carry ``le``; counters end in ``_total``; help on every family)."""
    assert post_image(service.url, png_bytes(sample_images(1, seed=1)[0])).status_code == 200
    assert post_image(service.url, b"not an image").status_code == 400
    text = httpx.get(f"{service.url}/metrics").text
    assert "rankcal_input_bin_total" in text and "rankcal_confidence_bin_total" in text
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_count_what_was_served(
    service: RunningService, exported_model: ExportedModel
) -> None:
    images = sample_images(8, seed=14)
    expected = offline(exported_model, images)
    before = Metrics.scrape(service.url)
    for image in images[:5]:
        assert post_image(service.url, png_bytes(image)).status_code == 200
    batch = {"images": np.stack(images[5:])[..., 0].tolist()}
    assert httpx.post(f"{service.url}/classify_batch", json=batch).status_code == 200
    after = Metrics.scrape(service.url)

    assert after.get("rankcal_confidence_count") - before.get("rankcal_confidence_count") == 8
    classes = expected.argmax(axis=1)
    for k, name in enumerate(CLASS_NAMES):
        served = after.get("rankcal_predictions_total", class_name=name) - before.get(
            "rankcal_predictions_total", class_name=name
        )
        assert served == np.count_nonzero(classes == k), name
    ood = int(np.count_nonzero(expected.max(axis=1) < exported_model.card.ood_threshold))
    assert (
        after.get("rankcal_ood_predictions_total") - before.get("rankcal_ood_predictions_total")
        == ood
    )
    confidence_sum = after.get("rankcal_confidence_sum") - before.get("rankcal_confidence_sum")
    assert confidence_sum == pytest.approx(float(expected.max(axis=1).sum()), rel=1e-5)
    assert after.labelsets("rankcal_model_info") == [
        {
            "model_version": "test-0001",
            "provider": active_provider(exported_model),
            "dataset": "quadrants",
            "ood_score": "msp",
        }
    ]
    # Each answered image's input statistics are counted once per statistic, on the card's bins.
    for statistic in INPUT_STATISTICS:
        counted = after.get("rankcal_input_bin_total", statistic=statistic) - before.get(
            "rankcal_input_bin_total", statistic=statistic
        )
        assert counted == 8, statistic
    # BentoML's own metrics are there beside ours.
    assert "bentoml_service_request_total" in after.names()
    assert after.get("bentoml_service_request_total", endpoint="/classify") > 0


def _json(payload: Any) -> Callable[[], bytes]:
    return lambda: json.dumps(payload).encode()  # NaN and Infinity become JSON's NaN literals


def _grey(n: int = 1, value: Any = 0) -> list[Any]:
    return np.full((n, SIZE, SIZE), value).tolist()


def _truncated_png() -> bytes:
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8))
    return data[: len(data) // 2]


def _other_format(fmt: str, mutate: bool = False) -> Callable[[], bytes]:
    """An image file in a format Pillow decodes but the service does not accept (BLP and DDS
    decoders raised NotImplementedError on malformed files: a 500 before the format list);
    ``mutate`` flips bytes after the header as a fuzzer would."""

    def make() -> bytes:
        image = Image.fromarray(np.full((8, 8, 3), 90, np.uint8))
        image = image.convert({"BLP": "P", "DDS": "RGBA"}.get(fmt, "RGB"))
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        data = bytearray(buffer.getvalue())
        if mutate:
            for i in range(20, len(data), 7):
                data[i] ^= 0x5A
        return bytes(data)

    return make


IMG, BATCH = "/classify", "/classify_batch"
PNG, JSON, PICKLE = "image/png", "application/json", "application/vnd.bentoml+pickle"
FORM = "application/x-www-form-urlencoded"
NPY = "application/x-npy"
# route, body, content type (None: no header), status, reason
BAD_INPUTS = [
    pytest.param(IMG, lambda: b"", PNG, 400, "empty_body", id="empty"),
    pytest.param(IMG, lambda: b"GIF89a, not really", "image/gif", 400, "not_an_image", id="junk"),
    pytest.param(IMG, _truncated_png, PNG, 400, "truncated_image", id="truncated"),
    pytest.param(IMG, lambda: png_with_header_size(0, 7), PNG, 400, "not_an_image", id="zero"),
    pytest.param(
        IMG, lambda: png_with_header_size(50_000, 50_000), PNG, 400, "too_many_pixels", id="bomb"
    ),
    pytest.param(
        IMG, lambda: png_bytes(np.zeros((65, 64), np.uint8)), PNG, 400, "too_many_pixels", id="big"
    ),
    *[
        pytest.param(
            IMG,
            _other_format(fmt, mutate),
            "image/x-" + fmt.lower(),
            400,
            "not_an_image",
            id=f"{fmt.lower()}{'_mutated' if mutate else ''}",
        )
        for fmt in ("BLP", "DDS", "ICO", "PPM", "TGA", "PCX")
        for mutate in (False, True)
    ],
    pytest.param(IMG, lambda: b"\0" * 70_000, PNG, 413, "too_large", id="body_too_large"),
    pytest.param(IMG, lambda: pickle.dumps(1), PICKLE, 415, "unsupported_media_type", id="pickle"),
    pytest.param(IMG, lambda: b"hi", "text/plain", 415, "unsupported_media_type", id="text"),
    pytest.param(
        IMG,
        lambda: b"--x--",
        "multipart/form-data; boundary=x",
        415,
        "unsupported_media_type",
        id="multipart",
    ),
    pytest.param(
        BATCH, lambda: pickle.dumps([1]), PICKLE, 415, "unsupported_media_type", id="b_pkl"
    ),
    pytest.param(BATCH, lambda: b"images=1", FORM, 415, "unsupported_media_type", id="b_form"),
    pytest.param(BATCH, _json({"images": _grey()[0]}), JSON, 422, "bad_shape", id="b_shape"),
    pytest.param(
        BATCH,
        _json({"images": np.zeros((1, SIZE, SIZE, 2)).tolist()}),
        None,
        422,
        "bad_shape",
        id="b_channels",
    ),
    pytest.param(BATCH, _json({"images": _grey(1, np.nan)}), JSON, 422, "non_finite", id="b_nan"),
    pytest.param(BATCH, _json({"images": _grey(1, np.inf)}), JSON, 422, "non_finite", id="b_inf"),
    pytest.param(BATCH, _json({"images": _grey(1, 300)}), JSON, 422, "out_of_range", id="b_range"),
    pytest.param(BATCH, _json({"images": _grey(1, "a")}), JSON, 422, "bad_dtype", id="b_dtype"),
    pytest.param(BATCH, _json({"images": _grey(17)}), JSON, 413, "too_many_items", id="b_many"),
    pytest.param(BATCH, _json({"images": [[1, 2], [3]]}), JSON, 400, "value_error", id="b_ragged"),
    pytest.param(BATCH, lambda: b'{"images": [', JSON, 400, "json_invalid", id="b_not_json"),
    pytest.param(BATCH, _json({"pictures": []}), JSON, 400, "missing", id="b_missing"),
    *[
        pytest.param(BATCH, body, NPY, status, reason, id=f"npy_{name}")
        for name, body, status, reason in (
            ("not_npy", lambda: b"\x93NUMPX" + bytes(20), 400, "bad_npy"),
            ("json_as_npy", _json({"images": _grey()}), 400, "bad_npy"),
            (
                "pickled_objects",
                lambda: npy_pickled(np.array([{"a": 1}], dtype=object)),
                400,
                "bad_npy",
            ),
            (
                "structured",
                lambda: npy_bytes(np.zeros(3, dtype=[("a", "u1"), ("b", "f4")])),
                400,
                "bad_npy",
            ),
            ("strings", lambda: npy_bytes(np.array(["a", "b"])), 400, "bad_npy"),
            ("complex", lambda: npy_bytes(np.zeros((1, SIZE, SIZE), np.complex64)), 400, "bad_npy"),
            (
                "truncated",
                lambda: npy_bytes(np.zeros((2, SIZE, SIZE), np.uint8))[:-1],
                400,
                "bad_npy",
            ),
            (
                "trailing",
                lambda: npy_bytes(np.zeros((2, SIZE, SIZE), np.uint8)) + b"x",
                400,
                "bad_npy",
            ),
            (
                "version_3",
                lambda: npy_version(np.zeros((1, SIZE, SIZE), np.uint8), 3),
                400,
                "bad_npy",
            ),
            (
                "huge_shape",
                lambda: npy_shape(np.zeros((1, SIZE, SIZE), np.uint8), "(10**30, 12)"),
                400,
                "bad_npy",
            ),
            (
                "code_in_header",
                lambda: npy_shape(np.zeros((1, SIZE, SIZE), np.uint8), "__import__('os')"),
                400,
                "bad_npy",
            ),
            ("shape", lambda: npy_bytes(np.zeros((1, SIZE, SIZE + 1), np.uint8)), 422, "bad_shape"),
            (
                "nan",
                lambda: npy_bytes(np.full((1, SIZE, SIZE), np.nan, np.float32)),
                422,
                "non_finite",
            ),
            (
                "range",
                lambda: npy_bytes(np.full((1, SIZE, SIZE), 256, np.int16)),
                422,
                "out_of_range",
            ),
            (
                "many",
                lambda: npy_bytes(np.zeros((17, SIZE, SIZE), np.uint8)),
                413,
                "too_many_items",
            ),
        )
    ],
]


@pytest.mark.parametrize(("route", "body", "media_type", "status", "reason"), BAD_INPUTS)
def test_bad_input_is_refused_and_counted(
    service: RunningService,
    route: str,
    body: Callable[[], bytes],
    media_type: str | None,
    status: int,
    reason: str,
) -> None:
    before = Metrics.scrape(service.url)
    headers = {} if media_type is None else {"Content-Type": media_type}
    response = httpx.post(f"{service.url}{route}", content=body(), headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert set(error) == {"error", "reason"}
    assert error["reason"] == reason
    assert len(error["error"]) > 10
    after = Metrics.scrape(service.url)
    counted = after.get("rankcal_rejected_requests_total", reason=reason) - before.get(
        "rankcal_rejected_requests_total", reason=reason
    )
    assert counted == 1
    assert after.get("rankcal_confidence_count") == before.get("rankcal_confidence_count")
    # ... and the service still answers.
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    assert post_image(service.url, png_bytes(sample_images(1, seed=0)[0])).status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("route", [IMG, BATCH])
def test_other_methods_get_the_json_refusal(
    service: RunningService, route: str, method: str
) -> None:
    before = Metrics.scrape(service.url)
    response = httpx.request(method, f"{service.url}{route}")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["reason"] == "method_not_allowed"
    after = Metrics.scrape(service.url)
    reason = {"reason": "method_not_allowed"}
    counted = after.get("rankcal_rejected_requests_total", **reason) - before.get(
        "rankcal_rejected_requests_total", **reason
    )
    assert counted == 1


def test_refusals_are_one_log_line_without_client_bytes(service: RunningService) -> None:
    marker = b"CLIENT-BYTES-1f2e3d"
    for route, media_type, body in [
        (IMG, PNG, marker * 50),
        (BATCH, JSON, b'{"images": "' + marker + b'"}'),
    ]:
        response = httpx.post(
            f"{service.url}{route}", content=body, headers={"Content-Type": media_type}
        )
        assert response.status_code in (400, 422)
    deadline = time.monotonic() + 10
    while "refused /classify_batch [POST]" not in service.log_text():
        assert time.monotonic() < deadline, service.log_text()[-3000:]
        time.sleep(0.2)
    log = service.log_text()
    assert marker.decode() not in log
    assert "Traceback" not in log and "[ERROR]" not in log
    assert "refused /classify [POST]: not_an_image" in log


def test_the_index_page_fetches_nothing_and_lists_every_route(service: RunningService) -> None:
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text and "http" not in page.text.replace("https?", "")
    documented = (ROOT / "docs" / "serving.md").read_text()
    for route, _ in ROUTES:
        assert html.escape(route) in page.text
        for one in route.split(", "):
            method, path = one.split(" ")
            assert f"`{method} {path}`" in documented, one
            if method == "GET":
                assert httpx.get(f"{service.url}{path}").status_code == 200, path
    assets = httpx.get(f"{service.url}/static_content/swagger-ui.css")
    assert assets.status_code == 404 and assets.json()["reason"] == "not_found"


def test_chunked_body_over_the_limit_is_refused(service: RunningService) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"\0" * 10_000  # no Content-Length: the guard counts while reading

    response = httpx.post(
        f"{service.url}/classify", content=chunks(), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 413
    assert response.json()["reason"] == "too_large"


def transparent_png(side: int) -> bytes:
    """A fully transparent side x side RGBA PNG: a few KB that decode to side² x 4 bytes."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (0, 0, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_decoding_does_not_stall_the_worker(exported_model: ExportedModel, tmp_path: Path) -> None:
    """16 small files that decode to 64 MB each (4096² RGBA, exactly at the default pixel
    limit): health checks keep answering at once and every image is answered, none 503."""
    port = free_port()
    params = write_params(tmp_path / "params.yaml", port=port, workers=1, max_image_pixels=4096**2)
    env = service_env(exported_model.path, params)
    heavy = transparent_png(4096)

    async def load_and_probe(url: str) -> tuple[list[int], float]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            uploads = asyncio.gather(
                *[
                    client.post("/classify", content=heavy, headers={"Content-Type": PNG})
                    for _ in range(16)
                ]
            )
            probes = []
            while not uploads.done() and len(probes) < 400:
                start = time.perf_counter()
                assert (await client.get("/livez")).status_code == 200
                probes.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)
            return [r.status_code for r in await uploads], max(probes, default=0.0)

    argv = serve_argv()
    with run_service(argv, env, port, tmp_path / "service.log") as running:
        statuses, slowest_probe = asyncio.run(load_and_probe(running.url))
    assert statuses == [200] * 16
    assert slowest_probe < 1.0, f"/livez took {slowest_probe:.2f} s while images decoded"


@pytest.mark.slow
def test_concurrency_limit_and_timeout_answer_in_the_contract(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    """serve.max_concurrency 2: of 8 heavy uploads at once, those beyond 2 get 429; with
    serve.timeout_s 0.05, a heavy upload gets 503 "timeout". Both counted, both JSON."""
    heavy = transparent_png(4096)
    port = free_port()
    argv = serve_argv()
    for overrides, expected in [
        ({"max_concurrency": 2, "timeout_s": 30.0}, {200, 429}),
        ({"max_concurrency": 64, "timeout_s": 0.05}, {503}),
    ]:
        params = write_params(
            tmp_path / "params.yaml", port=port, workers=1, max_image_pixels=4096**2, **overrides
        )
        env = service_env(exported_model.path, params)
        with run_service(argv, env, port, tmp_path / "service.log") as running:

            async def burst(url: str) -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                    return await asyncio.gather(
                        *[
                            client.post("/classify", content=heavy, headers={"Content-Type": PNG})
                            for _ in range(8)
                        ]
                    )

            responses = asyncio.run(burst(running.url))
            metrics = Metrics.scrape(running.url)
        assert {r.status_code for r in responses} == expected
        for refused in (r for r in responses if r.status_code != 200):
            body = refused.json()
            assert set(body) == {"error", "reason"}
            reason = {429: "too_many_requests", 503: "timeout"}[refused.status_code]
            assert body["reason"] == reason
        counted = sum(
            metrics.get("rankcal_rejected_requests_total", reason=r)
            for r in ("too_many_requests", "timeout")
        )
        assert counted == sum(r.status_code != 200 for r in responses)


# --- two workers --------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_aggregate_metrics(exported_model: ExportedModel, tmp_path: Path) -> None:
    """Two workers, and adaptive batching off (the 1-worker service has it on)."""
    port = free_port()
    params = write_params(tmp_path / "params.yaml", port=port, workers=2, batching=False, **LIMITS)
    env = service_env(exported_model.path, params)
    images = sample_images(30, seed=21)
    expected = offline(exported_model, images)

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            singles = [
                client.post(
                    "/classify", content=png_bytes(im), headers={"Content-Type": "image/png"}
                )
                for im in images[:20]
            ]
            batch = client.post(
                "/classify_batch", json={"images": np.stack(images[20:])[..., 0].tolist()}
            )
            bad = [
                client.post("/classify", content=b"no image", headers={"Content-Type": "image/png"})
                for _ in range(3)
            ]
            return await asyncio.gather(*singles, batch, *bad)

    argv = serve_argv()
    with run_service(argv, env, port, tmp_path / "service.log") as running:
        # /readyz answers from whichever worker takes the request: wait for both warm-ups.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while running.log_text().count("warm-up batch done") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        responses = asyncio.run(send_all(running.url))
        metrics = Metrics.scrape(running.url)
        log = running.log_text()
    assert [r.status_code for r in responses] == [200] * 21 + [400] * 3
    for response, probs in zip(responses[:20], expected[:20], strict=True):
        assert_matches(response.json(), probs, exported_model)
    for prediction, probs in zip(responses[20].json()["predictions"], expected[20:], strict=True):
        assert_matches(prediction, probs, exported_model)

    assert log.count("warm-up batch done") == 2
    assert metrics.get("rankcal_confidence_count") == 30
    classes = expected.argmax(axis=1)
    for k, name in enumerate(CLASS_NAMES):
        assert metrics.get("rankcal_predictions_total", class_name=name) == np.count_nonzero(
            classes == k
        )
    assert metrics.get("rankcal_rejected_requests_total", reason="not_an_image") == 3
    # Per-process window gauges: one series per worker pid, together holding every prediction.
    assert metrics.get("rankcal_window_size") == 30
    # Both histograms survive the multiprocess collection (BentoML's and ours).
    assert metrics.get("bentoml_service_request_duration_seconds_count") >= 24
    assert metrics.get("rankcal_confidence_bucket", le="+Inf") == 30


def without_card(source: Path, dest: Path) -> Path:
    """A copy of an exported model with its metadata (the model card) removed."""
    import onnx

    proto = onnx.load_model(str(source))
    del proto.metadata_props[:]
    onnx.save_model(proto, str(dest))
    return dest


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda src, tmp: tmp / "absent.onnx", "does not exist"),
        (
            lambda src, tmp: (
                (tmp / "cut.onnx").write_bytes(src.read_bytes()[:4000]) and tmp / "cut.onnx"
            ),
            "is not a loadable ONNX model",
        ),
        (
            lambda src, tmp: (tmp / "text.onnx").write_text("hello") and tmp / "text.onnx",
            "is not a loadable ONNX model",
        ),
        (lambda src, tmp: without_card(src, tmp / "bare.onnx"), "has no 'rankcal' model card"),
    ],
    ids=["missing", "truncated", "not_onnx", "no_card"],
)
def test_a_bad_model_stops_the_server_at_once(
    exported_model: ExportedModel, tmp_path: Path, make: Callable[..., Path], problem: str
) -> None:
    """Not workers restarted every 10 s forever: `bentoml serve` exits 1 with one line."""
    model = make(exported_model.path, tmp_path)
    params = write_params(tmp_path / "params.yaml", port=free_port())
    argv = serve_argv()
    done = subprocess.run(
        argv, cwd=ROOT, env=service_env(model, params), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert f"rankcal: cannot serve: {model} {problem}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_worker_killed_under_load_loses_only_its_requests_and_its_gauges(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    """Two workers under load from 8 clients that never retry; one worker gets SIGKILL. The
    other keeps answering, the lost requests are at most those the dead worker held (one in
    flight and one kept-alive connection per client), and its window gauges leave /metrics."""
    clients, seconds, kill_at = 8, 6.0, 2.0
    body = png_bytes(sample_images(1, seed=0)[0])
    with serving(exported_model.path, tmp_path, workers=2, batching=False, **LIMITS) as running:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while running.log_text().count("warm-up batch done") < 2:
            assert time.monotonic() < deadline, running.log_text()
            time.sleep(0.2)
        pids: set[str] = set()
        for image in sample_images(60, seed=3):  # until both workers have answered
            assert post_image(running.url, png_bytes(image)).status_code == 200
            sizes = Metrics.scrape(running.url).labelsets("rankcal_window_size")
            pids = {labels["pid"] for labels in sizes}
            if len(pids) == 2:
                break
        assert len(pids) == 2, pids
        victim = min(pids)

        async def load() -> tuple[int, int, int]:
            ok_before = ok_after = failed = 0
            start = time.monotonic()
            transport = httpx.AsyncHTTPTransport(retries=0)
            async with httpx.AsyncClient(
                base_url=running.url, timeout=30, transport=transport
            ) as client:

                async def one_client() -> None:
                    nonlocal ok_before, ok_after, failed
                    while time.monotonic() - start < seconds:
                        try:
                            answer = await client.post(
                                "/classify", content=body, headers={"Content-Type": PNG}
                            )
                            ok = answer.status_code == 200
                        except httpx.HTTPError:
                            ok = False
                        if not ok:
                            failed += 1
                        elif time.monotonic() - start < kill_at:
                            ok_before += 1
                        else:
                            ok_after += 1

                async def killer() -> None:
                    await asyncio.sleep(kill_at)
                    os.kill(int(victim), signal.SIGKILL)

                await asyncio.gather(killer(), *(one_client() for _ in range(clients)))
            return ok_before, ok_after, failed

        ok_before, ok_after, failed = asyncio.run(load())
        assert ok_before > 0 and ok_after > 0
        assert failed <= 2 * clients, f"{failed} requests lost"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                live = Metrics.scrape(running.url).labelsets("rankcal_window_size")
                if victim not in {labels["pid"] for labels in live}:
                    break
            assert time.monotonic() < deadline, f"pid {victim}'s gauges still in /metrics"
            time.sleep(0.5)
        assert post_image(running.url, body).status_code == 200


# --- in-process checks -------------------------------------------------------------------------


def test_readyz_waits_for_the_warm_up_batch(
    exported_model: ExportedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANKCAL_PARAMS", str(ROOT / "params.yaml"))
    monkeypatch.setenv("RANKCAL_MODEL", str(exported_model.path))  # checked at import
    module = importlib.import_module("serving.service")
    release = threading.Event()
    warm_up = module.Predictor.warm_up

    def slow_warm_up(self: Any) -> None:
        assert release.wait(10)
        warm_up(self)

    class NoMetrics:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    monkeypatch.setattr(module, "MODEL_PATH", exported_model.path)
    monkeypatch.setattr(module, "ServiceMetrics", NoMetrics)  # keep the global registry clean
    monkeypatch.setattr(module.Predictor, "warm_up", slow_warm_up)
    instance = module.ImageClassifier.inner()
    assert instance.__is_ready__() is False
    release.set()
    instance._warm.wait(10)
    assert instance.__is_ready__() is True


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, b'{"error": "x", "reason": "bad_shape"}', ("x", "bad_shape")),
        # BentoML 1.4.40 answers a BentoMLException with its body wrapped in a list.
        (415, b'[{"error": "pickle refused"}]', ("pickle refused", "unsupported_media_type")),
        (
            400,
            b'{"error": "1 validation error", "detail": [{"type": "missing", "loc": ["images"],'
            b' "msg": "Field required"}]}',
            ("images: Field required", "missing"),
        ),
        (405, b"Method Not Allowed", ("Method Not Allowed", "method_not_allowed")),
        (503, b'{"error": "An unexpected error"}', (None, "overloaded")),
    ],
)
def test_error_bodies_are_rewritten(
    status: int, body: bytes, expected: tuple[str | None, str]
) -> None:
    from serving.guard import _describe

    error, reason = _describe(status, body)
    assert reason == expected[1]
    if expected[0] is not None:
        assert error == expected[0]


# --- the Dockerfile ----------------------------------------------------------------------------


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negated
    return excluded


def test_every_copy_source_exists_in_the_build_context() -> None:
    stages = dockerfile_stages()
    assert set(stages) == {"train", "serve"}
    for stage in stages.values():
        for sources, _ in stage.copies():
            for source in sources:
                # The exported model is a pipeline output (make repro), not a tracked file.
                assert source == "models/model.onnx" or (ROOT / source).exists(), source
                assert source == "." or not dockerignored(source), source
    assert dockerignored(".venv")
    assert dockerignored("models/model.pt")


def test_train_target_runs_dvc_repro_with_the_lock() -> None:
    stage = dockerfile_stages()["train"]
    assert stage.args("FROM") == ["python:3.11 AS train"]
    assert any("-r requirements.lock" in run for run in stage.args("RUN"))
    assert json.loads(stage.args("CMD")[-1]) == ["dvc", "repro"]


def test_serve_target_is_slim_pinned_and_unprivileged() -> None:
    stage = serve_stage()
    assert stage.args("FROM") == ["python:3.11-slim AS serve"]
    lock = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    (install,) = [run for run in stage.args("RUN") if "pip install" in run]
    assert "-c requirements.lock" in install
    packages = {"onnxruntime-gpu", "bentoml", "pillow", "numpy", "prometheus-client", "pyyaml"}
    for package in packages:
        assert package in install
        assert package in lock
    assert "torch" not in install
    user = stage.args("USER")[-1]
    assert user not in ("root", "0")
    port = load_section(read_params(ROOT / "params.yaml"), "serve").port
    assert stage.args("EXPOSE") == [str(port)]
    (health,) = stage.args("HEALTHCHECK")
    assert f"http://localhost:{port}/readyz" in health
    assert "urllib" in health
    env = stage.env()
    workdir = stage.args("WORKDIR")[-1]
    model_dest = next(dest for sources, dest in stage.copies() if sources == ["models/model.onnx"])
    assert env["RANKCAL_MODEL"] == f"{workdir}/{model_dest}"
    assert env["RANKCAL_PARAMS"] == f"{workdir}/params.yaml"
    assert json.loads(stage.args("CMD")[-1])[:3] == ["bentoml", "serve", SERVICE]


def test_serve_image_files_import_without_torch(
    tmp_path: Path, exported_model: ExportedModel
) -> None:
    """Importing the service with torch & co. blocked pulls in only files the image copies."""
    script = (
        "import sys, json\n"
        "import serving.service, serving.client\n"
        "assert 'prometheus_client' not in sys.modules, 'metrics must be made in the worker'\n"
        "files = sorted(m.__file__ for n, m in sys.modules.items()\n"
        "               if n.split('.')[0] in ('pipeline', 'serving') and m.__file__)\n"
        "print(json.dumps(files))\n"
    )
    env = service_env(exported_model.path, ROOT / "params.yaml", [no_torch_dir(tmp_path)])
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    imported = {Path(f).resolve().relative_to(ROOT).as_posix() for f in json.loads(result.stdout)}
    copied: set[str] = set()
    for sources, _ in serve_stage().copies():
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                copied |= {p.relative_to(ROOT).as_posix() for p in path.rglob("*.py")}
            else:
                copied.add(source)
    assert imported <= copied, sorted(imported - copied)
    assert {"serving/service.py", "pipeline/preprocessing.py"} <= imported


def test_killing_make_serve_stops_the_server_and_its_workers(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    """``kill <make pid>`` (what a supervisor or a closed terminal script does): make passes
    SIGTERM to its child, which must be the server itself, not a shell that dies alone."""
    port = free_port()
    params = write_params(tmp_path / "params.yaml", port=port, workers=2)
    env = service_env(exported_model.path, params)
    argv = ["make", "-s", "serve", f"RANKCAL_MODEL={exported_model.path}"]
    argv.append(f"RANKCAL_PARAMS={params}")
    with run_service(argv, env, port, tmp_path / "make.log") as service:
        servers = psutil.Process(service.process.pid).children(recursive=True)
        assert len(servers) >= 3  # bentoml serve and its two workers
        service.process.send_signal(signal.SIGTERM)  # make only, not its process group
        service.process.wait(timeout=30)
        _, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{service.url}/livez", timeout=2)
