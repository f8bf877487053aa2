"""The service's OpenAPI description: the project's, not BentoML's boilerplate.

BentoML 1.4 writes ``/docs.json`` with version ``None``, its own advertising as the description,
``/classify_batch``'s images as a flat array of numbers, the ``.npy`` body missing, and none of
the service's refusals (only BentoML's generic 400/404/500). Its generator takes no options for
these, so :class:`OpenAPIDocument`, an ASGI middleware, rewrites the document BentoML serves
with :func:`describe`, a pure function of the document and the served model's figures.

The refusals are listed once, in :data:`ERRORS` (also the table of ``docs/serving.md``), each
with its status, ``reason`` label and routes; every one answers ``{"error", "reason"}``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

OPENAPI_PATH = "/docs.json"
ERROR_SCHEMA = "ErrorResponse"
BOTH = ("/classify", "/classify_batch")
POST_ROUTES = (*BOTH, "/feedback")


@dataclass(frozen=True)
class Refusal:
    """One kind of refusal: its HTTP status, ``reason`` label, routes and when it happens."""

    status: int
    reason: str
    routes: tuple[str, ...]
    when: str


ERRORS: tuple[Refusal, ...] = (
    Refusal(400, "empty_body", BOTH, "no body"),
    Refusal(400, "not_an_image", ("/classify",), "the bytes are no image in an accepted format"),
    Refusal(400, "truncated_image", ("/classify",), "the image data ends early or is corrupt"),
    Refusal(400, "too_many_pixels", ("/classify",), "width x height over serve.max_image_pixels"),
    Refusal(
        400,
        "json_invalid",
        ("/classify_batch",),
        "the body is no JSON, lacks images or is ragged (the reason is pydantic's error type: "
        "json_invalid, missing, value_error, ...)",
    ),
    Refusal(400, "bad_npy", ("/classify_batch",), "an application/x-npy body is no plain .npy"),
    Refusal(413, "too_large", BOTH, "body over serve.max_request_bytes"),
    Refusal(413, "too_many_items", ("/classify_batch",), "more than serve.max_batch_items images"),
    Refusal(415, "unsupported_media_type", BOTH, "another content type (pickle included)"),
    Refusal(422, "bad_shape", ("/classify_batch",), "not N x H x W (x C) at the model's size"),
    Refusal(422, "bad_dtype", ("/classify_batch",), "values that are no numbers"),
    Refusal(422, "non_finite", ("/classify_batch",), "NaN or infinity"),
    Refusal(
        422,
        "out_of_range",
        ("/classify_batch",),
        "integers outside 0..255 or floats outside [0, 1]",
    ),
    Refusal(400, "non_finite", ("/classify",), "a float image holding NaN or infinity"),
    Refusal(
        400,
        "out_of_range",
        ("/classify",),
        "a float or 32-bit integer image whose values fit no known scale",
    ),
    Refusal(
        400,
        "missing",
        ("/feedback",),
        "the body is no JSON object with a feedback list of {prediction_id, label} (the reason is "
        "pydantic's error type: json_invalid, missing, string_type, too_long, ...)",
    ),
    Refusal(400, "malformed", ("/feedback",), "a prediction_id is not one of this service's"),
    Refusal(400, "bad_label", ("/feedback",), "a label is no class index or class name"),
    Refusal(400, "issued_in_future", ("/feedback",), "a prediction_id dated ahead of this clock"),
    Refusal(403, "forged", ("/feedback",), "a prediction_id signed with another key, or altered"),
    Refusal(404, "feedback_off", ("/feedback",), "the service runs without RANKCAL_FEEDBACK_KEY"),
    Refusal(409, "other_model", ("/feedback",), "a prediction_id of another model version"),
    Refusal(409, "replayed", ("/feedback",), "a label for this prediction_id was already counted"),
    Refusal(410, "expired", ("/feedback",), "a prediction_id older than serve.feedback_max_age_s"),
    Refusal(413, "too_large", ("/feedback",), "body over serve.max_request_bytes"),
    Refusal(415, "unsupported_media_type", ("/feedback",), "another content type than JSON"),
    Refusal(429, "too_many_requests", BOTH, "serve.max_concurrency requests already in flight"),
    Refusal(503, "overloaded", ("/classify",), "adaptive batching missed serve.max_latency_ms"),
    Refusal(503, "timeout", BOTH, "no answer within serve.timeout_s"),
)

_PHRASES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    410: "Gone",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    503: "Service unavailable",
}


def batch_images_schema(image_shape: tuple[int, int, int], max_items: int) -> dict[str, Any]:
    """JSON schema of ``/classify_batch``'s ``images``: N x H x W, or N x H x W x C with C of 1
    or 3, of integers in 0..255 or numbers in [0, 1] (one kind per request)."""
    height, width, _ = image_shape
    pixel = {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 255},
            {"type": "number", "minimum": 0, "maximum": 1},
        ]
    }
    channels = {
        "type": "array",
        "items": pixel,
        "anyOf": [{"minItems": n, "maxItems": n} for n in (1, 3)],
        "description": "1 (grey) or 3 (RGB) values",
    }

    def rows(cell: dict[str, Any]) -> dict[str, Any]:
        row = {"type": "array", "items": cell, "minItems": width, "maxItems": width}
        return {"type": "array", "items": row, "minItems": height, "maxItems": height}

    return {
        "type": "array",
        "minItems": 1,
        "maxItems": max_items,
        "items": {"oneOf": [rows(pixel), rows(channels)]},
        "description": (
            f"N images at the model's size, N x {height} x {width} or N x {height} x {width} x C "
            f"(C of 1 or 3), N from 1 to {max_items} (serve.max_batch_items): integers in 0..255 "
            "(pixel values) or numbers in [0, 1] (fractions of white)"
        ),
    }


def describe(
    spec: dict[str, Any],
    *,
    version: str,
    model_version: str,
    image_shape: tuple[int, int, int],
    max_items: int,
) -> dict[str, Any]:
    """``spec`` (BentoML's OpenAPI document) with the project's description, the batch route's
    typed body (JSON and ``.npy``) and every refusal of the POST routes.

    Args:
        spec: The document BentoML serves at ``/docs.json``.
        version: The project's version (``pipeline.__version__``).
        model_version: The served model's (its card's ``model_version``).
        image_shape: The model's ``(H, W, C)``.
        max_items: ``serve.max_batch_items``.

    Returns:
        A new document; ``spec`` is not modified.
    """
    out = copy.deepcopy(spec)
    # BentoML says 3.0.2, but its schemas are pydantic's JSON Schema 2020-12 ("type": "null",
    # "anyOf" for optional fields), which is OpenAPI 3.1's dialect and invalid in 3.0.
    out["openapi"] = "3.1.0"
    height, width, channels = image_shape
    out["info"] = {
        "title": "rankcal",
        "version": version,
        "description": (
            "Calibrated image classification: a RankMixup-trained network, temperature-scaled, "
            "over ONNX Runtime, with Prometheus metrics of confidence drift, input drift and "
            f"label-free estimated accuracy (`/metrics`). Serving model {model_version}, "
            f"input {height} x {width} x {channels}. Every refusal is a 4xx (or 503) with "
            '`{"error": message, "reason": label}`, counted in '
            "`rankcal_rejected_requests_total{reason}`."
        ),
    }
    schemas = out.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = {
        "type": "object",
        "required": ["error", "reason"],
        "properties": {
            "error": {"type": "string", "description": "what was wrong, for a person"},
            "reason": {
                "type": "string",
                "pattern": "^[a-z][a-z0-9_]{0,39}$",
                "description": "a fixed label, also the metric's",
            },
            "refused": {
                "type": "array",
                "description": "/feedback only: every refused item (none of the request counted)",
                "items": {
                    "type": "object",
                    "required": ["index", "reason", "error"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "reason": {"type": "string"},
                        "error": {"type": "string"},
                    },
                },
            },
        },
    }
    paths = out.get("paths", {})
    if "/classify" in paths:
        # BentoML's own schema here carries a key of its own ("root_input") that is no JSON
        # schema keyword: the document did not validate as OpenAPI.
        image_file = {
            "type": "string",
            "format": "binary",
            "description": (
                "one image file (PNG, JPEG, GIF, BMP, TIFF or WebP), any size: fitted to the "
                f"model's {height} x {width} as evaluation fits images"
            ),
        }
        paths["/classify"]["post"]["requestBody"] = {
            "required": True,
            "content": {
                media: {"schema": dict(image_file)}
                for media in ("image/*", "application/octet-stream")
            },
        }
    if "/classify_batch" in paths:
        body = paths["/classify_batch"]["post"].setdefault("requestBody", {})
        images = batch_images_schema(image_shape, max_items)
        batch_json = {"type": "object", "required": ["images"], "properties": {"images": images}}
        # BentoML also lists its input model among the components, typed "tensor" (no JSON
        # schema type): the typed one replaces it.
        if "classify_batch__Input" in schemas:
            schemas["classify_batch__Input"] = batch_json
        body["content"] = {
            "application/json": {"schema": batch_json},
            "application/x-npy": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": (
                        "the same array as a .npy file (format 1.0 or 2.0, no pickled objects): "
                        f"shape (N, {height}, {width}) or (N, {height}, {width}, C), an integer "
                        "dtype with values in 0..255 or a float dtype with values in [0, 1]"
                    ),
                }
            },
        }
        body["required"] = True
    for route in POST_ROUTES:
        if route in paths:
            paths[route]["post"]["responses"] = _responses(
                paths[route]["post"].get("responses", {}), route
            )
    return out


def _responses(responses: dict[str, Any], route: str) -> dict[str, Any]:
    """The 2xx answers as BentoML describes them, then the route's refusals by status."""
    out = {code: answer for code, answer in responses.items() if code.startswith("2")}
    for status in sorted({e.status for e in ERRORS if route in e.routes}):
        kinds = [e for e in ERRORS if e.status == status and route in e.routes]
        listed = "; ".join(f"`{e.reason}`: {e.when}" for e in kinds)
        out[str(status)] = {
            "description": f"{_PHRASES[status]}. {listed}",
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"},
                    "example": {"error": kinds[0].when, "reason": kinds[0].reason},
                }
            },
        }
    return out


class OpenAPIDocument:
    """ASGI middleware: ``GET /docs.json`` answers :func:`describe` of BentoML's document.

    Args:
        app: The ASGI app (BentoML's).
        **figures: :func:`describe`'s keyword arguments.
    """

    def __init__(self, app: Any, **figures: Any) -> None:
        self.app = app
        self.figures = figures
        self._body: bytes | None = None  # the document never changes while the process runs

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != OPENAPI_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self._body is None:
            status, body = await _capture(self.app, scope, receive)
            if status != 200:
                await self.app(scope, receive, send)
                return
            self._body = json.dumps(describe(json.loads(body), **self.figures)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self._body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self._body, "more_body": False})


async def _capture(app: Any, scope: dict[str, Any], receive: Any) -> tuple[int, bytes]:
    """Run ``app`` on the request and collect its answer instead of sending it."""
    status, chunks = 500, []

    async def collect(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, collect)
    return status, b"".join(chunks)
