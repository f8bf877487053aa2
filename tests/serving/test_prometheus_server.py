"""A real Prometheus server scrapes the real service and evaluates the shipped rules.

Debian's ``prometheus`` (2.42) scrapes a two-worker ``bentoml serve`` every second with
``serving/prometheus/recording_rules.yml`` and ``alert_rules.yml`` loaded; the test sends known
traffic and reads the results back through Prometheus' HTTP API. Skipped where the binary is
missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from pipeline.drift import bin_counts, psi, sampling_psi
from pipeline.model_card import INPUT_NAME, METADATA_KEY, ReferenceConfidence
from pipeline.preprocessing import to_model_input
from tests.serving.conftest import (
    ROOT,
    ExportedModel,
    free_port,
    png_bytes,
    quadrant_images,
    run_service,
    serve_argv,
    service_env,
    stop_process_group,
    write_params,
)
from tests.serving.drift_model import (
    digit_images,
    faint_quadrant_images,
    fit_all,
    noise_images,
    ort_probabilities,
)

PROMETHEUS = Path("/usr/bin/prometheus")
RULE_FILES = [
    ROOT / "serving" / "prometheus" / f for f in ("recording_rules.yml", "alert_rules.yml")
]
JOB = "rankcal"
WAIT_S = 20.0  # longest wait for any one Prometheus condition

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not PROMETHEUS.exists(), reason=f"{PROMETHEUS} is missing (Debian's prometheus package)"
    ),
    # Deprecations inside BentoML 1.4.40 (pydantic and pathspec APIs).
]

T = TypeVar("T")


def rule_names(kind: str) -> set[str]:
    """Names of the ``record`` or ``alert`` rules in the shipped rule files."""
    names = set()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule[kind] for rule in group["rules"] if kind in rule}
    return names


def prometheus_config(tmp: Path, target_port: int) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def run_prometheus(config: Path, tmp: Path) -> Iterator[str]:
    """Start Prometheus in its own process group; yield its base URL; always kill the group."""
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=tmp,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            return False

        wait_for(ready, "prometheus ready", log)
        yield url
    finally:
        stop_process_group(process, timeout=15)


def wait_for(check: Callable[[], T], what: str, log: Path | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{log.read_text(errors='replace')}" if log is not None else ""
            pytest.fail(f"timed out after {WAIT_S} s waiting for {what}{detail}")
        time.sleep(0.25)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's vector result (label sets and values)."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    assert body["data"]["resultType"] == "vector", body
    return body["data"]["result"]


def scalar(url: str, promql: str) -> float | None:
    """The value of a query answering one sample; None while it answers none."""
    result = query(url, promql)
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


@contextlib.contextmanager
def prometheus_over_service(
    model: ExportedModel, tmp: Path, workers: int = 2
) -> Iterator[tuple[str, Any, Path]]:
    """A service on ``model`` and a Prometheus scraping it every second with the shipped
    rules; yields Prometheus' URL, the service and Prometheus' log once Prometheus has scraped
    the idle service (so the counters' first samples are 0, and rate() and increase() see the
    traffic as an increase rather than a constant)."""
    port = free_port()
    params = write_params(tmp / "params.yaml", port=port, workers=workers, max_latency_ms=10_000)
    env = service_env(model.path, params)
    # Prometheus first: it starts in about a second and scrapes the service as soon as it is up.
    with (
        run_prometheus(prometheus_config(tmp, port), tmp) as prom,
        run_service(serve_argv(), env, port, tmp / "service.log") as service,
    ):
        log = tmp / "prometheus.log"
        wait_for(lambda: scalar(prom, f'up{{job="{JOB}"}}') == 1, "up == 1", log)
        wait_for(
            lambda: scalar(prom, "sum(rankcal_predictions_total)") == 0,
            "a scrape of the idle service",
            log,
        )
        yield prom, service, log


def offline_confidence(model: ExportedModel, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    x = to_model_input(images, model.card.mean, model.card.std)
    return session.run(["probabilities"], {INPUT_NAME: x})[0].max(axis=1).astype(np.float64)


def send_traffic(url: str, images: np.ndarray, singles: int) -> None:
    """``singles`` images one by one to /classify (concurrently), the rest in one batch."""

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            requests = [
                client.post(
                    "/classify", content=png_bytes(im), headers={"Content-Type": "image/png"}
                )
                for im in images[:singles]
            ]
            requests.append(
                client.post("/classify_batch", json={"images": images[singles:, ..., 0].tolist()})
            )
            return await asyncio.gather(*requests)

    for response in asyncio.run(send_all()):
        assert response.status_code == 200, response.text


def test_prometheus_scrapes_the_service_and_evaluates_the_rules(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    images, _ = quadrant_images(30, seed=31)
    confidence = offline_confidence(exported_model, images)
    ood = int(np.count_nonzero(confidence < exported_model.card.ood_threshold))
    sent = len(images)

    with prometheus_over_service(exported_model, tmp_path) as (prom, service, prom_log):
        send_traffic(service.url, images, singles=20)

        wait_for(
            lambda: scalar(prom, "sum(rankcal_predictions_total)") == sent,
            f"sum(rankcal_predictions_total) == {sent}",
            prom_log,
        )
        assert scalar(prom, "sum(rankcal_confidence_count)") == sent
        assert scalar(prom, "sum(rankcal_ood_predictions_total)") == ood
        assert scalar(prom, "sum(rankcal_confidence_sum)") == pytest.approx(
            float(confidence.sum()), rel=1e-6
        )
        # Both workers answer one scrape (BentoML's multiprocess collection): two pids.
        pids = {s["metric"]["pid"] for s in query(prom, "rankcal_window_size")}
        assert len(pids) == 2, pids
        assert scalar(prom, "sum(rankcal_window_size)") == sent

        # The rules are loaded from the shipped files and evaluate without error.
        def rules_ok() -> dict[str, dict[str, Any]] | None:
            response = httpx.get(f"{prom}/api/v1/rules", timeout=5).json()
            rules = {
                rule["name"]: rule
                for group in response["data"]["groups"]
                for rule in group["rules"]
            }
            healthy = all(rule["health"] == "ok" for rule in rules.values())
            return rules if rules and healthy else None

        rules = wait_for(rules_ok, 'every rule with health "ok"', prom_log)
        recording = {name for name, rule in rules.items() if rule["type"] == "recording"}
        alerting = {name for name, rule in rules.items() if rule["type"] == "alerting"}
        assert recording == rule_names("record")
        assert alerting == rule_names("alert")
        assert not any(rule.get("lastError") for rule in rules.values())

        # rate() over two scrapes, 0 then `sent`: the recorded estimate is the mean confidence.
        estimate = wait_for(
            lambda: scalar(prom, f'rankcal:estimated_accuracy:rate5m{{job="{JOB}"}}'),
            "rankcal:estimated_accuracy:rate5m",
            prom_log,
        )
        assert 0 < estimate <= 1
        assert estimate == pytest.approx(float(confidence.mean()), rel=1e-6)
        ood_ratio = scalar(prom, f'rankcal:ood_ratio:rate5m{{job="{JOB}"}}')
        assert ood_ratio is not None and ood_ratio == pytest.approx(ood / sent, abs=1e-9)
        increase = scalar(prom, f'rankcal:predictions:increase5m{{job="{JOB}"}}')
        assert increase is not None and math.isfinite(increase) and increase > 0
        # Nothing fires: every alert waits 10 minutes.
        assert query(prom, 'ALERTS{alertstate="firing"}') == []


def test_input_drift_marks_the_estimate_not_valid_in_a_real_prometheus(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    """Two workers, Prometheus evaluating the shipped rules every second: 120 in-distribution
    images leave the estimate valid; 120 inverted images after them (half the 5-minute window)
    raise the input PSI far past the alert's 1 and mark the estimate not valid; noise photos
    are flagged OOD."""
    images, _ = quadrant_images(120, seed=41)
    job = f'{{job="{JOB}"}}'
    with prometheus_over_service(exported_model, tmp_path) as (prom, service, prom_log):
        send_traffic(service.url, images, singles=40)
        wait_for(
            lambda: scalar(prom, "sum(rankcal_predictions_total)") == len(images),
            f"sum(rankcal_predictions_total) == {len(images)}",
            prom_log,
        )
        wait_for(
            lambda: scalar(prom, f"rankcal:estimate_valid:5m{job}") is not None,
            "rankcal:estimate_valid:5m after 120 predictions",
            prom_log,
        )
        assert scalar(prom, f"rankcal:estimate_valid:5m{job}") == 1
        in_distribution = scalar(prom, f"max(rankcal:input_psi:5m{job})")
        assert in_distribution is not None and in_distribution < 1  # RankcalInputDrift's line

        send_traffic(service.url, 255 - images, singles=40)
        # The estimate turns not valid as soon as one scrape holds a few inverted images, while
        # the PSI is still partway up (0.41 once): wait until every prediction has been scraped
        # and the rules, evaluated every second, have carried the PSI past the alert's line.
        wait_for(
            lambda: scalar(prom, "sum(rankcal_predictions_total)") == 2 * len(images),
            f"sum(rankcal_predictions_total) == {2 * len(images)}",
            prom_log,
        )
        wait_for(
            lambda: (scalar(prom, f"max(rankcal:input_psi:5m{job})") or 0) > 1,
            "max(rankcal:input_psi:5m) > 1 after 120 inverted images",
            prom_log,
        )
        assert scalar(prom, f"rankcal:estimate_valid:5m{job}") == 0
        shifted = scalar(prom, f"max(rankcal:input_psi:5m{job})")
        assert shifted is not None and shifted > 1 > in_distribution

        # Photos of noise, fitted to the model's 12x12: flat grey no training image resembles,
        # flagged is_ood by their statistics whatever the model's confidence.
        rng = np.random.default_rng(5)
        noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(20)]
        flags = [
            httpx.post(
                f"{service.url}/classify",
                content=png_bytes(im),
                headers={"Content-Type": "image/png"},
            ).json()["is_ood"]
            for im in noise
        ]
        assert sum(flags) >= 18, flags


def with_reference(model: ExportedModel, held_out: np.ndarray, path: Path) -> ExportedModel:
    """``model`` with its card's confidence reference binned from ``held_out`` images, as the
    evaluate stage bins the validation and test images' calibrated confidences."""
    confidence = ort_probabilities(model.path, model.card, held_out).max(axis=1)
    edges = model.card.reference_confidence.bin_edges
    reference = ReferenceConfidence(
        edges, bin_counts(confidence, edges).tolist(), float(confidence.mean())
    )
    card = dataclasses.replace(model.card, reference_confidence=reference)
    proto = onnx.load(str(model.path))
    next(p for p in proto.metadata_props if p.key == METADATA_KEY).value = card.to_json()
    onnx.save(proto, str(path))
    return ExportedModel(path, card)


@pytest.mark.parametrize("shift", ["digits", "noise"])
def test_a_clean_stream_against_a_small_reference_raises_no_confidence_drift(
    calibrated_model: ExportedModel, shift: str, tmp_path: Path
) -> None:
    """A small folder's monitoring in miniature, on the drift tests' model (tests/serving/
    test_drift.py): its confidence reference holds 360 held-out images (a small folder's
    validation and test splits together) and 300 clean images of the same kind stream in. The
    PSI beyond sampling noise stays under RankcalConfidenceDrift's 0.25 and the alert never
    goes pending; 300 images of a shift after them (the drift tests' digits or noise) push it
    over and it does. Against 120 reference images (a test split alone) the raw PSI of clean
    streams like this one reaches 0.25 in most draws (test_drift.py measures it)."""
    model = with_reference(
        calibrated_model, faint_quadrant_images(360, seed=61)[0], tmp_path / "model.onnx"
    )
    edges, reference = (
        model.card.reference_confidence.bin_edges,
        model.card.reference_confidence.counts,
    )
    clean = faint_quadrant_images(300, seed=62)[0]
    shifted = fit_all({"digits": digit_images, "noise": noise_images}[shift]()[:300], model.card)
    # Offline first, so that a failure says whether the premise or the rules are wrong.
    confidence = ort_probabilities(model.path, model.card, clean).max(axis=1)
    assert psi(bin_counts(confidence, edges), reference) - sampling_psi(reference, 300) < 0.25
    job = f'{{job="{JOB}"}}'
    alerts = f'ALERTS{{alertname="RankcalConfidenceDrift", job="{JOB}"}}'
    with prometheus_over_service(model, tmp_path) as (prom, service, prom_log):
        send_traffic(service.url, clean, singles=30)
        wait_for(
            lambda: scalar(prom, "sum(rankcal_predictions_total)") == len(clean),
            f"sum(rankcal_predictions_total) == {len(clean)}",
            prom_log,
        )
        excess = wait_for(
            lambda: scalar(prom, f"rankcal:psi_excess:5m{job}"),
            "rankcal:psi_excess:5m after the clean stream",
            prom_log,
        )
        assert excess < 0.25
        time.sleep(3)  # a few more rule evaluations: none may turn the alert pending
        assert query(prom, alerts) == []

        send_traffic(service.url, shifted, singles=30)
        wait_for(
            lambda: scalar(prom, "sum(rankcal_predictions_total)") == 2 * len(clean),
            f"sum(rankcal_predictions_total) == {2 * len(clean)}",
            prom_log,
        )
        pending = wait_for(
            lambda: query(prom, alerts), f"RankcalConfidenceDrift pending after {shift}", prom_log
        )
        assert pending[0]["metric"]["alertstate"] == "pending"
        assert (scalar(prom, f"rankcal:psi_excess:5m{job}") or 0) > 0.25
