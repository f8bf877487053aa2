"""The framework's floor for ``bench/serve.py``: BentoML around the same ONNX session, nothing more.

``bentoml serve bench.minimal_service:MinimalClassifier`` with the environment of the real
service (``RANKCAL_MODEL``, ``RANKCAL_PARAMS``; port and workers from its ``serve`` section).
``POST /classify`` decodes one already-sized image file (the body) with Pillow and runs the
model on it: no validation, no adaptive batching, no metrics, no drift window. ``POST /echo``
answers the body it got, the cost of an HTTP round trip through BentoML alone. Measured with
the same load as the real service, the gap between the two is what the service itself adds.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import onnxruntime as ort
from bentoml.validators import ContentType
from PIL import Image

from pipeline.config import ServeConfig, load_section, read_params
from pipeline.model_card import INPUT_NAME, METADATA_KEY, ModelCard
from pipeline.preprocessing import to_model_input
from serving.predictor import execution_providers

MODEL_PATH = Path(os.environ.get("RANKCAL_MODEL", "models/model.onnx"))
SERVE: ServeConfig = load_section(
    read_params(Path(os.environ.get("RANKCAL_PARAMS", "params.yaml"))), "serve"
)

Body = Annotated[bytes, ContentType("image/*")]


@bentoml.service(name="rankcal_floor", workers=SERVE.workers, http={"port": SERVE.port})
class MinimalClassifier:
    """One ONNX Runtime session; ready as soon as it is loaded."""

    def __init__(self) -> None:
        self.session = ort.InferenceSession(str(MODEL_PATH), providers=execution_providers())
        meta = self.session.get_modelmeta().custom_metadata_map
        self.card = ModelCard.from_json(meta[METADATA_KEY])
        self.mode = "L" if self.card.image_shape[2] == 1 else "RGB"

    @bentoml.api(route="/classify")
    def classify(self, data: Body, /) -> dict[str, Any]:
        """Top-1 class and probability of one image already at the model's size."""
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert(self.mode), dtype=np.uint8)
        batch = pixels.reshape(1, *self.card.image_shape)
        x = to_model_input(batch, self.card.mean, self.card.std)
        probs = self.session.run(["probabilities"], {INPUT_NAME: x})[0][0]
        best = int(np.argmax(probs))
        return {"class_index": best, "confidence": float(probs[best])}

    @bentoml.api(route="/echo")
    def echo(self, data: Body, /) -> bytes:
        """The body, unchanged."""
        return data
