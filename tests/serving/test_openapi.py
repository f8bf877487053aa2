"""The OpenAPI description the service serves (serving/openapi.py): the project's version and
description, the batch route's typed body, and every refusal of both prediction routes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
from openapi_spec_validator import validate

from pipeline import __version__
from serving.feedback import REASONS as FEEDBACK_REASONS
from serving.metrics import REJECTION_REASONS
from serving.npy import MEDIA_TYPE, npy_bytes
from serving.openapi import ERROR_SCHEMA, ERRORS, batch_images_schema, describe
from tests.serving.conftest import SIZE, ExportedModel, RunningService, quadrant_images, serving

BENTOML_LIKE = {
    "openapi": "3.0.2",
    "info": {"title": "rankcal", "version": "None", "description": "# BentoML boilerplate"},
    "paths": {
        "/classify": {
            "post": {
                "responses": {"200": {"description": "ok"}, "500": {"description": "x"}},
                "requestBody": {"content": {"image/*": {"schema": {"type": "string"}}}},
            }
        },
        "/classify_batch": {
            "post": {
                "responses": {"200": {"description": "ok"}, "404": {"description": "x"}},
                "requestBody": {"content": {"application/json": {"schema": {"type": "array"}}}},
            }
        },
        "/feedback": {
            "post": {
                "responses": {"200": {"description": "ok"}, "500": {"description": "x"}},
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            }
        },
        "/readyz": {"get": {"responses": {"200": {"description": "ok"}}}},
    },
    "components": {"schemas": {}},
}
FIGURES = {"version": "9.9.9", "model_version": "m-1", "image_shape": (4, 3, 1), "max_items": 5}


def test_describe_sets_the_projects_info_and_keeps_the_input_untouched() -> None:
    before = copy.deepcopy(BENTOML_LIKE)
    doc = describe(BENTOML_LIKE, **FIGURES)
    assert before == BENTOML_LIKE
    assert doc["info"]["version"] == "9.9.9" and "BentoML" not in doc["info"]["description"]
    assert doc["openapi"] == "3.1.0"  # pydantic's schemas are JSON Schema 2020-12
    assert "m-1" in doc["info"]["description"] and "4 x 3 x 1" in doc["info"]["description"]
    assert doc["paths"]["/readyz"] == BENTOML_LIKE["paths"]["/readyz"]


@pytest.mark.parametrize("route", ["/classify", "/classify_batch", "/feedback"])
def test_every_refusal_of_a_route_is_listed_with_the_error_body(route: str) -> None:
    answers = describe(BENTOML_LIKE, **FIGURES)["paths"][route]["post"]["responses"]
    expected = {str(e.status) for e in ERRORS if route in e.routes}
    assert set(answers) == {"200"} | expected  # BentoML's generic 404/500 are gone
    for status in expected:
        content = answers[status]["content"]["application/json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
        for refusal in ERRORS:
            if route in refusal.routes and str(refusal.status) == status:
                assert f"`{refusal.reason}`" in answers[status]["description"]


def test_the_refusals_cover_every_reason_the_service_counts() -> None:
    listed = {e.reason for e in ERRORS}
    # method_not_allowed answers other methods than the documented POST operations.
    assert set(REJECTION_REASONS) - {"method_not_allowed"} <= listed
    # beyond the pre-registered ones: the .npy reader's, pydantic's (first of a family), the
    # batcher's, and /feedback's (every reason a feedback item is refused for, and its switch)
    assert listed - set(REJECTION_REASONS) == {
        "bad_npy",
        "json_invalid",
        "missing",
        "overloaded",
        "feedback_off",
        *FEEDBACK_REASONS,
    }


def test_the_batch_schema_accepts_the_model_size_and_refuses_others() -> None:
    schema = {"type": "object", "properties": {"images": batch_images_schema((4, 3, 1), 5)}}
    grey = np.zeros((2, 4, 3), dtype=int).tolist()
    rgb = np.full((1, 4, 3, 3), 0.5).tolist()
    for images in (grey, rgb, [[[0, 255, 1]] * 4]):
        jsonschema.validate({"images": images}, schema)
    bad = [
        np.zeros((2, 3, 3)).tolist(),  # 3 rows, not 4
        np.zeros((6, 4, 3)).tolist(),  # 6 images, max 5
        [[[0, 256, 1]] * 4],  # over 255
        [[[0, 1.5, 1]] * 4],  # a float over 1
        np.zeros((1, 4, 3, 2)).tolist(),  # 2 channels
        [],  # no image
    ]
    for images in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"images": images}, schema)


@pytest.fixture(scope="module")
def service(
    exported_model: ExportedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    folder = tmp_path_factory.mktemp("openapi")
    with serving(exported_model.path, Path(folder), workers=1, max_batch_items=8) as running:
        yield running


def test_the_served_document_is_valid_openapi_with_the_projects_figures(
    service: RunningService, exported_model: ExportedModel
) -> None:
    doc = httpx.get(f"{service.url}/docs.json").json()
    validate(doc)  # OpenAPI 3.0 schema of the whole document
    assert doc["info"]["version"] == __version__
    assert exported_model.card.model_version in doc["info"]["description"]
    body = doc["paths"]["/classify_batch"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", MEDIA_TYPE}
    images = body["application/json"]["schema"]["properties"]["images"]
    assert images["maxItems"] == 8  # serve.max_batch_items of this service
    jsonschema.validate(quadrant_images(2)[0][..., 0].tolist(), images)


def test_live_refusals_are_the_documented_ones(service: RunningService) -> None:
    doc = httpx.get(f"{service.url}/docs.json").json()
    images = quadrant_images(9)[0]
    sent = {
        "/classify": [
            (b"", "image/png"),
            (b"not an image", "image/png"),
            (b"x", "text/plain"),
        ],
        "/classify_batch": [
            (npy_bytes(images), MEDIA_TYPE),  # 9 images, max 8
            (npy_bytes(images[:2, :5]), MEDIA_TYPE),  # 5 rows, not SIZE
            (npy_bytes(np.full((1, SIZE, SIZE), np.nan)), MEDIA_TYPE),
            (b"\x93NUMPY broken", MEDIA_TYPE),
            (b"{", "application/json"),
        ],
    }
    for route, cases in sent.items():
        documented = {
            (status, reason)
            for status, answer in doc["paths"][route]["post"]["responses"].items()
            for reason in _reasons(answer["description"])
        }
        for body, content_type in cases:
            answer = httpx.post(
                f"{service.url}{route}", content=body, headers={"Content-Type": content_type}
            )
            key = (str(answer.status_code), answer.json()["reason"])
            assert key in documented, (route, key, sorted(documented))


def _reasons(description: str) -> list[str]:
    """The `reason` labels a response's description lists (in backticks)."""
    return description.split("`")[1::2]
