"""Delayed labels through the real service: a labelled replay gives, in Prometheus' rules, the
realized accuracy and ECE that offline evaluation computes on the same images; tampered,
replayed and other-model prediction ids are refused with 4xx and counted; no key, no feedback.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml

from pipeline.drift import bin_index
from pipeline.metrics.calibration import expected_calibration_error
from pipeline.preprocessing import to_model_input
from serving import client
from serving.feedback import TokenSigner
from serving.npy import MEDIA_TYPE, npy_bytes
from tests.serving.conftest import (
    CLASS_NAMES,
    ROOT,
    ExportedModel,
    Metrics,
    RunningService,
    quadrant_images,
    serving,
)
from tests.serving.test_prometheus_rules import needs_promtool

KEY = "feedback-test-key-0123456789abcdef"
RULES = ROOT / "serving" / "prometheus" / "recording_rules.yml"


def labelled_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Toy images, every third one with its quadrant barely lit: some answers are wrong and
    confidences spread over the bins."""
    images, labels = quadrant_images(n, seed=21)
    faint = images[::3].astype(np.int16) - 110
    images[::3] = np.clip(faint, 0, 255).astype(np.uint8)
    return images, labels


def offline_probabilities(model: ExportedModel, images: np.ndarray) -> np.ndarray:
    """The evaluation's view: ONNX Runtime on the same images, preprocessed as evaluation does."""
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    x = to_model_input(images, model.card.mean, model.card.std)
    return session.run(["probabilities"], {session.get_inputs()[0].name: x})[0]


def binned_ece(confidence: np.ndarray, correct: np.ndarray, edges: list[float]) -> float:
    """ECE over the service's bins (lo, hi]: sum_b |correct_b - confidence_b| / n."""
    bins = bin_index(confidence, edges)
    n_bins = len(edges) - 1
    right = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
    claimed = np.bincount(bins, weights=confidence, minlength=n_bins)
    return float(np.abs(right - claimed).sum() / len(confidence))


def classify(service: RunningService, images: np.ndarray) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{service.url}/classify_batch",
        content=npy_bytes(images),
        headers={"Content-Type": MEDIA_TYPE},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def send_feedback(service: RunningService, items: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{service.url}/feedback", json={"feedback": items}, timeout=60)


@pytest.fixture(scope="module", params=[1, 2], ids=["1 worker", "2 workers"])
def service(
    request: pytest.FixtureRequest,
    exported_model: ExportedModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningService]:
    folder = tmp_path_factory.mktemp(f"feedback{request.param}")
    with serving(
        exported_model.path,
        folder,
        environment={"RANKCAL_FEEDBACK_KEY": KEY},
        workers=request.param,
    ) as running:
        running.workers = request.param  # type: ignore[attr-defined]
        yield running


def promtool_case(scrape: Metrics, expected: dict[str, float]) -> dict[str, Any]:
    """A promtool test of recording_rules.yml on the scraped feedback counters, each grown
    linearly to its scraped value over an hour (so increase(...[1h]) at 60m is that value)."""
    series = []
    for name in ("rankcal_feedback_labels_total", "rankcal_feedback_confidence_total"):
        for labels in scrape.labelsets(name):
            value = scrape.get(name, **labels)
            text = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            series.append(
                {
                    "series": f'{name}{{job="rankcal", instance="a:3000", {text}}}',
                    "values": f"0+{value / 60!r}x60",
                }
            )
    tests = [
        {
            "expr": f"round({rule}, 0.0001)",
            "eval_time": "60m",
            "exp_samples": [{"labels": '{job="rankcal"}', "value": round(value, 4)}],
        }
        for rule, value in expected.items()
    ]
    return {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }


@needs_promtool
def test_a_labelled_replay_gives_the_offline_accuracy_and_ece_in_the_rules(
    service: RunningService, exported_model: ExportedModel, tmp_path: Path
) -> None:
    """The realized ECE of the rules is the evaluation's on the live bins, to the 1.5e-5
    resolution of a token's confidence; the evaluation stage's own 15 equal-width bins give a
    different number for the same predictions (the binning difference, reported)."""
    images, labels = labelled_images(300)
    answers = classify(service, images)
    ids = [a["prediction_id"] for a in answers]
    assert all(isinstance(i, str) and len(i) == 44 for i in ids) and len(set(ids)) == len(ids)
    items = [
        # labels by index and by name, both accepted
        {"prediction_id": i, "label": int(y) if k % 2 else CLASS_NAMES[y]}
        for k, (i, y) in enumerate(zip(ids, labels, strict=True))
    ]
    for start in range(0, len(items), 64):  # spread over requests, so over both workers
        response = send_feedback(service, items[start : start + 64])
        assert response.status_code == 200, response.text
        assert response.json() == {"counted": len(items[start : start + 64])}

    probs = offline_probabilities(exported_model, images)
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    assert [a["class_index"] for a in answers] == probs.argmax(1).tolist()
    edges = exported_model.card.reference_confidence.bin_edges
    live_ece = binned_ece(confidence, correct, edges)
    evaluation_ece = expected_calibration_error(probs, labels)
    scrape = Metrics.scrape(service.url)
    assert scrape.get("rankcal_feedback_labels_total") == len(labels)
    assert scrape.get("rankcal_feedback_labels_total", outcome="correct") == correct.sum()
    assert 0 < correct.mean() < 1 and live_ece > 0

    case = promtool_case(
        scrape,
        {
            "rankcal:realized_accuracy:1h": float(correct.mean()),
            "rankcal:labelled_confidence:1h": float(confidence.mean()),
            "rankcal:realized_ece:1h": live_ece,
        },
    )
    path = tmp_path / "replay_test.yml"
    path.write_text(yaml.safe_dump(case))
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, (
        f"{result.stdout}{result.stderr}\nlive-binned ECE {live_ece:.5f}, 15-bin evaluation ECE "
        f"{evaluation_ece:.5f}"
    )


def test_bad_prediction_ids_are_refused_by_reason_and_count_nothing(
    service: RunningService, exported_model: ExportedModel
) -> None:
    images, labels = labelled_images(4)
    answers = classify(service, images)
    ids = [a["prediction_id"] for a in answers]
    before = Metrics.scrape(service.url)
    raw = bytearray(base64.urlsafe_b64decode(ids[0]))
    raw[10] ^= 1  # the predicted class, changed: the tag no longer matches
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    other_model = TokenSigner(KEY.encode(), "another-model", 3600).issue(0, 0.9)
    cases = [
        ([{"prediction_id": tampered, "label": 0}], 403, "forged"),
        ([{"prediction_id": "nonsense", "label": 0}], 400, "malformed"),
        ([{"prediction_id": other_model, "label": 0}], 409, "other_model"),
        ([{"prediction_id": ids[1], "label": "no_such_class"}], 400, "bad_label"),
        (
            [{"prediction_id": ids[1], "label": 1}, {"prediction_id": ids[1], "label": 1}],
            409,
            "replayed",
        ),
        ([{"prediction_id": ids[1], "label": True}], 400, "int_type"),  # pydantic's strict type
        ([], 400, "too_short"),
    ]
    for items, status, reason in cases:
        response = send_feedback(service, items)
        assert (response.status_code, response.json()["reason"]) == (status, reason), items
    # the bad item named, the good one not counted either
    mixed = send_feedback(
        service, [{"prediction_id": ids[2], "label": 0}, {"prediction_id": tampered, "label": 0}]
    )
    assert mixed.status_code == 403
    assert mixed.json()["refused"] == [
        {"index": 1, "reason": "forged", "error": "prediction_id was not issued by this service"}
    ]
    once = [{"prediction_id": ids[2], "label": int(labels[2])}]
    answers = [send_feedback(service, once) for _ in range(4)]
    assert answers[0].json() == {"counted": 1}
    counted = sum(a.status_code == 200 for a in answers)
    refused = [a.json()["reason"] for a in answers if a.status_code != 200]
    assert set(refused) <= {"replayed"}
    # one worker counts it once; two may count it once each (no state shared between processes,
    # the documented limit), never more
    assert counted == 1 if service.workers == 1 else 1 <= counted <= 2  # type: ignore[attr-defined]
    after = Metrics.scrape(service.url)
    grew = after.get("rankcal_feedback_labels_total") - before.get("rankcal_feedback_labels_total")
    assert grew == counted
    for reason in ("forged", "malformed", "other_model", "bad_label", "replayed"):
        grew = after.get("rankcal_feedback_refused_total", reason=reason) - before.get(
            "rankcal_feedback_refused_total", reason=reason
        )
        assert grew >= 1, reason
    assert after.get("rankcal_rejected_requests_total", reason="forged") >= 2


def test_without_a_key_answers_carry_no_id_and_feedback_is_off(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    with serving(exported_model.path, tmp_path, environment={"RANKCAL_FEEDBACK_KEY": ""}) as off:
        (answer,) = classify(off, labelled_images(1)[0])
        assert answer["prediction_id"] is None
        response = send_feedback(off, [{"prediction_id": "x" * 44, "label": 0}])
        assert response.status_code == 404 and response.json()["reason"] == "feedback_off"


def test_the_python_client_sends_labels(service: RunningService) -> None:
    images, labels = labelled_images(6)
    answers = client.classify_batch(images, url=service.url)
    pairs = [(a["prediction_id"], int(y)) for a, y in zip(answers, labels, strict=True)]
    assert client.send_feedback(pairs, url=service.url) == 6
    # sent again: refused by the worker that counted it (with two workers the other may count
    # it once more first: no state is shared between processes)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        for _ in range(service.workers + 1):  # type: ignore[attr-defined]
            client.send_feedback(pairs[:1], url=service.url)
    assert refused.value.response.status_code == 409
    assert refused.value.response.json()["reason"] == "replayed"
