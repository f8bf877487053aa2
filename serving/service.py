"""The HTTP service: ``bentoml serve serving.service:ImageClassifier``.

One BentoML class over the exported ONNX model (``RANKCAL_MODEL``, default ``models/model.onnx``)
configured by the ``serve`` section of ``RANKCAL_PARAMS`` (default ``params.yaml``). Endpoints,
fields and error codes are described in ``docs/serving.md``.

Refusals are made in two places, and every one answers ``{"error": ..., "reason": ...}`` with a
4xx status: :class:`RequestGuard`, an ASGI middleware in front of the prediction routes, refuses
what must never reach BentoML's parsers (unsupported or pickle content types: 415; bodies over
``serve.max_request_bytes``: 413; empty bodies: 400); the endpoints refuse what they cannot read
(pydantic validation errors, which BentoML answers 400, and :class:`~serving.images.InputError`).
The guard also rewrites BentoML's own error bodies into that shape and counts each refusal once
in ``rankcal_rejected_requests_total``.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import threading
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
)
from pydantic_core import PydanticCustomError
from starlette.responses import Response

from pipeline import __version__
from pipeline.config import ConfigError, ServeConfig, env_overrides, load_section, read_params
from pipeline.preprocessing import match_channels
from serving import npy, outer_middleware, request_timeout
from serving.feedback import MIN_KEY_BYTES, ReplayGuard, TokenSigner, judge
from serving.guard import BodyStep, RequestGuard, error_response
from serving.images import (
    InputError,
    as_uint8_batch,
    decode_image,
    fitted_bytes,
    is_small_image,
    read_fitted,
)
from serving.index_page import IndexPage
from serving.logs import install_refusal_log_filter
from serving.metrics import ServiceMetrics
from serving.openapi import OpenAPIDocument
from serving.predictor import CPU, ModelFileError, Predictor, execution_providers, open_model
from serving.reaper import start_reaper

logger = logging.getLogger(__name__)
# BentoML's workers log the root logger at WARNING; the start-up line names model and provider.
logging.getLogger("serving").setLevel(logging.INFO)
install_refusal_log_filter()
request_timeout.install()
# Before BentoML builds the app: its outer metrics and access log read bounded client text.
outer_middleware.install()

MODEL_PATH = Path(os.environ.get("RANKCAL_MODEL", "models/model.onnx"))
PARAMS_PATH = Path(os.environ.get("RANKCAL_PARAMS", "params.yaml"))
# Read at import: BentoML takes workers, port and batching from the class decorator. Each key
# can be overridden by RANKCAL_SERVE_<KEY> (containers, Kubernetes), read as YAML and
# validated with the file's.
try:
    _PARAMS = read_params(PARAMS_PATH)
    _PARAMS["serve"] = env_overrides(_PARAMS.get("serve", {}), "serve", os.environ)
    SERVE: ServeConfig = load_section(_PARAMS, "serve")
except ConfigError as err:
    raise SystemExit(f"rankcal: cannot serve: {err}") from None
# Checked at import, which `bentoml serve` does before it starts any worker: a missing,
# truncated or card-less model stops the server at once with one line naming the file, instead
# of workers that fail in __init__ and are restarted forever.
try:
    _, CARD = open_model(MODEL_PATH, [CPU])
except ModelFileError as err:
    raise SystemExit(f"rankcal: cannot serve: {err}") from None

# Prediction routes and the content types each accepts (fnmatch patterns; a request without a
# Content-Type header is let through, as BentoML reads it as the route's default).
ROUTES: dict[str, tuple[str, ...]] = {
    "/classify": ("image/*", "application/octet-stream"),
    "/classify_batch": ("application/json", npy.MEDIA_TYPE),
    "/feedback": ("application/json",),
}
# Delayed labels need every worker and replica to verify each other's prediction ids: one key,
# given to all, or none (feedback off). A key made up per process would split the service.
FEEDBACK_KEY = os.environ.get("RANKCAL_FEEDBACK_KEY", "").encode()
if FEEDBACK_KEY and len(FEEDBACK_KEY) < MIN_KEY_BYTES:
    raise SystemExit(
        f"rankcal: cannot serve: RANKCAL_FEEDBACK_KEY has {len(FEEDBACK_KEY)} bytes, needs at "
        f"least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)"
    )
# Status of a refused feedback request, by the reason of its first refused item.
FEEDBACK_STATUS = {
    "malformed": 400,
    "bad_label": 400,
    "issued_in_future": 400,
    "forged": 403,
    "other_model": 409,
    "replayed": 409,
    "expired": 410,
}
npy.register(field="images")


class ClassProbability(BaseModel):
    """One of the top-k classes."""

    class_index: int
    class_name: str
    probability: float


class Prediction(BaseModel):
    """One image's calibrated prediction (``confidence`` is the top-1 probability)."""

    class_index: int
    class_name: str
    confidence: float
    top_k: list[ClassProbability]
    entropy: float  # nats
    # the card's OOD score under its threshold, or input statistics unlike any training image
    is_ood: bool
    model_version: str
    # signed: what POST /feedback needs to count a true label (null while feedback is off)
    prediction_id: str | None


class BatchPrediction(BaseModel):
    """Predictions for the images of one batch request, in request order."""

    predictions: list[Prediction]


class FeedbackItem(BaseModel):
    """One delayed true label: the ``prediction_id`` of an answer and the class it really was
    (its index or its name)."""

    prediction_id: Annotated[StrictStr, StringConstraints(max_length=64)]
    label: StrictInt | StrictStr


class FeedbackCounted(BaseModel):
    """How many labels were counted (all of the request's)."""

    counted: int


def _fit_upload(data: bytes) -> bytes:
    """Decode an uploaded image and fit it to the model, for :class:`RequestGuard`.

    Decoding is the costly part of a request (a 12-megapixel JPEG, a 4096x4096 PNG): on the
    event loop it would stall health checks and every other request, so the guard runs it in a
    thread, a bounded number at once, unless the header declares a small image
    (:func:`serving.images.is_small_image`), and passes the small fitted image on.
    """
    predictor = bentoml.get_current_service().predictor
    height, width, _ = predictor.image_shape
    image = decode_image(data, max_pixels=SERVE.max_image_pixels, draft_for=(height, width))
    return fitted_bytes(predictor.conform([image])[0])


def _decode_upload(data: bytes) -> list[np.ndarray]:
    """The request's fitted image (from :func:`_fit_upload`) as a one-item list: BentoML
    batches requests by joining lists. A body that did not pass through the guard (an
    in-process call) is decoded here."""
    try:
        shape = bentoml.get_current_service().predictor.image_shape
        fitted = read_fitted(data, shape)
        if fitted is not None:
            return [fitted]
        return [decode_image(data, max_pixels=SERVE.max_image_pixels, draft_for=shape[:2])]
    except InputError as err:
        raise PydanticCustomError(err.reason, "{message}", {"message": str(err)}) from None


def _only_item(value: Any) -> Any:
    """A batched call answers each request with a one-item list; the response is that item."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


ImageUpload = Annotated[bytes, ContentType("image/*"), AfterValidator(_decode_upload)]
SinglePrediction = Annotated[Prediction, BeforeValidator(_only_item)]


# BentoML's own timeout stays as a backstop for the other routes, past the guard's (which answers
# the prediction routes within the {"error", "reason"} contract); serving/request_timeout.py
# keeps its timers from outliving their requests.
@bentoml.service(
    name="rankcal",
    workers=SERVE.workers,
    http={"port": SERVE.port},
    traffic={"timeout": SERVE.timeout_s + 10},
)
class ImageClassifier:
    """Calibrated image classification with drift metrics; ready once a warm-up batch has run."""

    def __init__(self) -> None:
        self._warm = threading.Event()
        self.predictor = Predictor(MODEL_PATH, top_k=SERVE.top_k, providers=execution_providers())
        card, provider = self.predictor.card, self.predictor.provider
        logger.info(
            "serving %s: %s model %s, %d classes, on %s",
            MODEL_PATH,
            card.dataset,
            card.model_version,
            card.num_classes,
            provider,
        )
        self.metrics = ServiceMetrics(
            card,
            window=SERVE.window,
            provider=provider,
            min_predictions=SERVE.min_predictions,
        )
        self.tokens = (
            TokenSigner(FEEDBACK_KEY, card.model_version, SERVE.feedback_max_age_s)
            if FEEDBACK_KEY
            else None
        )
        self.replays = ReplayGuard(SERVE.feedback_replay_window_s, SERVE.feedback_remembered)
        if multiproc_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            start_reaper(Path(multiproc_dir))  # a killed worker's gauges must not linger
        # In the background, so /livez answers while /readyz says 503 until the model has run.
        threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self.predictor.warm_up()
        except Exception:
            logger.exception("warm-up batch failed: /readyz stays 503")
            return
        # The worker's ~130,000 objects from start-up (modules, classes, BentoML and pydantic
        # internals) live as long as the process: frozen, Python's full collections skip them
        # instead of walking them all every few seconds under load (70 ms pauses, which were the
        # p99 of /classify at 8 clients; docs/benchmarks.md).
        gc.freeze()
        self._warm.set()
        logger.info("warm-up batch done: ready")

    def __is_ready__(self) -> bool:
        return self._warm.is_set()

    @bentoml.api(
        route="/classify",
        batchable=SERVE.batching and SERVE.max_batch_size > 1,
        batch_dim=0,
        max_batch_size=max(SERVE.max_batch_size, 2),
        max_latency_ms=SERVE.max_latency_ms,
    )
    def classify(self, images: ImageUpload, /) -> SinglePrediction:
        """Classify one image file sent as the request body.

        BentoML passes the decoded images of one or more requests as a list (each request
        contributes a one-item list, see ``_decode_upload``) and splits the returned list back
        by position, so item i answers request i whatever order the batch was formed in.
        """
        records = self._predict(self.predictor.conform(images))  # type: ignore[arg-type]
        return [Prediction.model_validate(r) for r in records]  # type: ignore[return-value]

    @bentoml.api(route="/classify_batch", output_spec=BatchPrediction)
    def classify_batch(self, images: np.ndarray) -> BatchPrediction | Response:
        """Classify already-sized images: ``{"images": N x H x W (x C) nested lists}`` as JSON,
        or the same array as a ``.npy`` file (``application/x-npy``, :mod:`serving.npy`)."""
        try:
            batch = as_uint8_batch(
                images, self.predictor.image_shape, max_items=SERVE.max_batch_items
            )
        except InputError as err:
            # One line like the guard's refusals (the guard's rewriter counts it).
            logger.info("refused /classify_batch [POST]: %s", err.reason)
            return error_response(err.status, str(err), err.reason)
        batch = match_channels(batch, self.predictor.image_shape[2])
        # Validated as one model and sent as its JSON: BentoML would dump the returned model
        # twice (to Python objects, then to JSON), which cost more than the ONNX run's share at
        # 64 images (docs/benchmarks.md).
        answer = BatchPrediction.model_validate({"predictions": self._predict(batch)})
        return Response(answer.model_dump_json(), media_type="application/json")

    @bentoml.api(route="/feedback", output_spec=FeedbackCounted)
    def feedback(
        self,
        feedback: Annotated[
            list[FeedbackItem], Field(min_length=1, max_length=SERVE.feedback_max_items)
        ],
    ) -> FeedbackCounted | Response:
        """Count delayed true labels of earlier predictions: all of the request's, or none.

        Each item's ``prediction_id`` must be one this service issued (any worker or replica
        with the same ``RANKCAL_FEEDBACK_KEY``), for the model it serves now, younger than
        ``serve.feedback_max_age_s``, and not counted before by this worker within
        ``serve.feedback_replay_window_s``.
        """
        if self.tokens is None:
            return error_response(
                404,
                "feedback is off: start the service with RANKCAL_FEEDBACK_KEY set (the same key "
                "on every replica)",
                "feedback_off",
            )
        items = [(item.prediction_id, item.label) for item in feedback]
        verdict = judge(items, self.tokens, self.replays, self.predictor.card.class_names)
        for refused in verdict.refused:
            self.metrics.record_feedback_refusal(refused.reason)
        if verdict.refused:
            first = verdict.refused[0]
            more = len(verdict.refused) - 1
            error = f"feedback[{first.index}]: {first.message}"
            body = {
                "error": error + (f" (and {more} more refused; nothing counted)" if more else ""),
                "reason": first.reason,
                "refused": [
                    {"index": r.index, "reason": r.reason, "error": r.message}
                    for r in verdict.refused
                ],
            }
            logger.info("refused /feedback [POST]: %s", first.reason)
            return Response(
                json.dumps(body),
                status_code=FEEDBACK_STATUS[first.reason],
                media_type="application/json",
            )
        self.metrics.record_feedback(
            np.asarray(verdict.confidence), np.asarray(verdict.correct, dtype=bool)
        )
        return FeedbackCounted(counted=len(verdict.correct))

    def _predict(self, batch: np.ndarray) -> list[dict[str, Any]]:
        out = self.predictor.predict(batch, batch_size=SERVE.max_batch_size)
        self.metrics.record_predictions(out.confidence, out.predicted, out.is_ood)
        self.metrics.record_inputs(out.input_stats)
        records = self.predictor.records(out)
        ids = (
            self.tokens.issue_many(out.predicted.tolist(), out.confidence.tolist())
            if self.tokens is not None
            else [None] * len(records)
        )
        for record, prediction_id in zip(records, ids, strict=True):
            record["prediction_id"] = prediction_id
        return records


def _cache_io_schemas(service: Any) -> None:
    """Build each endpoint's input and output JSON schema once instead of on every request.

    BentoML 1.4.40 asks an IO model for its JSON schema per request (``mime_type`` when it writes
    the response, ``model_validate_json`` when it reads the request), and pydantic builds it from
    scratch each time: a profile of ``/classify`` under load (py-spy, 8 clients) found 21% of the
    worker's samples there. A class's schema never changes, so the argument-less call is cached;
    calls with arguments (the OpenAPI page's) still build theirs.
    """
    for api in service.apis.values():
        for spec in (api.input_spec, api.output_spec):
            build = spec.model_json_schema
            cached = build()

            def model_json_schema(
                *args: Any, _build: Any = build, _cached: Any = cached, **kwargs: Any
            ) -> Any:
                return (
                    copy.deepcopy(_cached) if not args and not kwargs else _build(*args, **kwargs)
                )

            spec.model_json_schema = model_json_schema


_cache_io_schemas(ImageClassifier)
ImageClassifier.add_asgi_middleware(IndexPage, service_name="rankcal")
ImageClassifier.add_asgi_middleware(
    OpenAPIDocument,
    version=__version__,
    model_version=CARD.model_version,
    image_shape=tuple(CARD.image_shape),
    max_items=SERVE.max_batch_items,
)
ImageClassifier.add_asgi_middleware(
    RequestGuard,
    max_bytes=SERVE.max_request_bytes,
    routes=ROUTES,
    prepare={"/classify": BodyStep(run=_fit_upload, cheap=is_small_image)},
    # Decoding is CPU-bound and Pillow releases the GIL: one decode per core uses the machine;
    # more would only add the memory of more decoded images in flight.
    max_parallel=os.cpu_count() or 1,
    max_concurrency=SERVE.max_concurrency,
    timeout_s=SERVE.timeout_s,
)
