"""The exported model behind the service: ONNX Runtime session, model card and preprocessing.

Images go through :mod:`pipeline.preprocessing` exactly as in evaluation (resize, then channel
conversion, then normalisation), and the graph's ``probabilities`` output already includes the
fitted temperature, so what is served is what was evaluated. No BentoML here: the service class
only adds HTTP around it.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pipeline.config import ConfigError
from pipeline.feature_norm import STATISTIC as FEATURE_STATISTIC
from pipeline.feature_norm import norm_rank
from pipeline.images import fit_image
from pipeline.input_stats import STATISTICS as INPUT_STATISTICS
from pipeline.input_stats import atypical, input_statistics
from pipeline.model_card import INPUT_NAME, METADATA_KEY, ModelCard
from pipeline.ood_selection import score as ood_score
from pipeline.preprocessing import to_model_input

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def execution_providers() -> list[str]:
    """CUDA then CPU where this ONNX Runtime build has CUDA and an NVIDIA driver is installed,
    else CPU only.

    onnxruntime-gpu lists its CUDA provider on every machine; asked for it without a GPU, it
    prints a red error about a missing CUDA library at every start and falls back to the CPU.
    Where a driver is present, ONNX Runtime can still fall back (CUDA libraries missing), so
    check :attr:`Predictor.provider` for what is really in use.
    """
    if CUDA in ort.get_available_providers() and cuda_driver_present():
        return [CUDA, CPU]
    return [CPU]


def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver's user-space library (``libcuda.so.1``) loads here."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row, with ``0 * log 0 = 0``."""
    p = np.asarray(probabilities, dtype=np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    # + 0.0 turns the -0.0 of a one-hot row into 0.0 (JSON would show "-0.0").
    return -np.sum(p * logs, axis=-1) + 0.0


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest probabilities per row, largest first (ties: lower index)."""
    order = np.argsort(-np.asarray(probabilities), axis=-1, kind="stable")
    return order[..., :k]


class ModelFileError(ValueError):
    """The model file cannot be served; the message names the file and the problem."""


# ONNX Runtime's own exceptions for a file it cannot load (missing, truncated, not ONNX).
_ORT_LOAD_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in (
        "Fail",
        "InvalidArgument",
        "InvalidGraph",
        "InvalidProtobuf",
        "NoModel",
        "NoSuchFile",
        "NotImplemented",
        "RuntimeException",
    )
)


def session_options() -> ort.SessionOptions:
    """ONNX Runtime's settings for a model behind the HTTP service.

    Its intra-op threads spin-wait for the next piece of work by default, which suits a process
    that only runs the model; in the service they take the cores from the event loop, the
    decode threads, the other requests' work and whatever else runs on the machine. Measured
    with ``hey`` on 2 cores, ``/classify`` at 8 clients: about the same on an idle machine
    (721-731 req/s spinning, 765-802 not), and 340-386 against 670-686 while a training run
    shared the cores.
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_model(
    model_path: Path, providers: Sequence[str]
) -> tuple[ort.InferenceSession, ModelCard]:
    """An ONNX Runtime session of an exported model and the model card in its metadata.

    Raises:
        ModelFileError: If the file is missing, is no loadable ONNX model, has no valid model
            card or takes another input than ``images``.
    """
    path = Path(model_path)
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist: run `make repro` or set RANKCAL_MODEL")
    try:
        session = ort.InferenceSession(str(path), session_options(), providers=list(providers))
    except _ORT_LOAD_ERRORS as err:
        raise ModelFileError(f"{path} is not a loadable ONNX model ({err})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ModelFileError(
            f"{path} has no {METADATA_KEY!r} model card in its metadata: export it with the "
            "pipeline's export stage"
        )
    try:
        card = ModelCard.from_json(meta[METADATA_KEY])
    except ConfigError as err:
        raise ModelFileError(f"{path} has an invalid model card: {err}") from None
    inputs = [i.name for i in session.get_inputs()]
    if inputs != [INPUT_NAME]:
        raise ModelFileError(f"{path} must take one input {INPUT_NAME!r}, got {inputs}")
    outputs = [o.name for o in session.get_outputs()]
    if outputs != list(card.output_names):
        raise ModelFileError(
            f"{path} must have the outputs {list(card.output_names)} its card implies, got "
            f"{outputs}"
        )
    return session, card


@dataclass(frozen=True)
class Predictions:
    """Per-item results of one model call; arrays of length N (``top_k`` is N x k)."""

    probabilities: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    ood_score: np.ndarray  # the card's OOD score, higher for in-distribution inputs
    # an input statistic where the training images (almost) never were (pipeline.input_stats)
    atypical: np.ndarray
    is_ood: np.ndarray  # ood_score < the card's ood_threshold, or atypical
    top_k: np.ndarray
    # pipeline.input_stats.input_statistics of the batch, with the feature norms' training ranks
    # (pipeline.feature_norm) under "feature_norm"; each only where the card has its reference
    input_stats: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.predicted)


class Predictor:
    """An exported calibrated classifier with its card, ready to score uint8 images.

    Args:
        model_path: The exported ``.onnx`` file (card in its metadata).
        top_k: Probabilities reported per prediction (capped at the number of classes).
        providers: ONNX Runtime execution providers in order of preference.

    Raises:
        ModelFileError: If the file cannot be served (see :func:`open_model`).
    """

    def __init__(self, model_path: Path, *, top_k: int, providers: Sequence[str]) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.session, self.card = open_model(model_path, providers)
        self.top_k = min(top_k, self.card.num_classes)
        self.provider: str = self.session.get_providers()[0]
        ref = self.card.input_reference
        # The card's training histograms per input statistic, built once, not per request.
        self._input_counts = (
            None if ref is None else {name: ref.counts(name) for name in INPUT_STATISTICS}
        )
        if providers and providers[0] != self.provider:
            logger.warning("asked for %s but ONNX Runtime runs on %s", providers[0], self.provider)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The model's input ``(H, W, C)``."""
        height, width, channels = self.card.image_shape
        return height, width, channels

    def conform(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Bring uint8 ``(H, W, C)`` images of any size and 1 or 3 channels to the model's shape.

        Each image goes through :func:`pipeline.images.fit_image` under the card's resize
        policy: the function the data stage fitted a folder dataset's images with.

        Returns:
            uint8 ``(N, H, W, C)`` at the model's shape.
        """
        height, width, channels = self.image_shape
        out = np.empty((len(images), height, width, channels), dtype=np.uint8)
        for i, image in enumerate(images):
            out[i] = fit_image(image, (height, width), channels, self.card.resize)
        return out

    def predict(self, images: np.ndarray, *, batch_size: int) -> Predictions:
        """Score uint8 ``(N, H, W, C)`` images already at the model's shape.

        Args:
            images: The batch; its shape must equal ``(N, *image_shape)``.
            batch_size: Most images per ONNX Runtime call.

        Raises:
            ValueError: On a dtype or shape other than the model's.
        """
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(
                f"expected uint8 (N, {', '.join(map(str, self.image_shape))}), "
                f"got {images.dtype} {images.shape}"
            )
        card = self.card
        chunks = [
            self.session.run(
                list(card.output_names),
                {
                    INPUT_NAME: to_model_input(
                        images[start : start + batch_size], card.mean, card.std
                    )
                },
            )
            for start in range(0, len(images), batch_size)
        ]
        empty = np.zeros((0, card.num_classes), dtype=np.float32)
        logits = np.concatenate([c[0] for c in chunks]) if chunks else empty
        probs = np.concatenate([c[1] for c in chunks]) if chunks else empty
        predicted = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
        confidence = probs[np.arange(len(probs)), predicted].astype(np.float64)
        # msp is the confidence the answer reports (to the last bit, so is_ood never disagrees
        # with it); entropy and energy come from the graph's logits, already divided by the
        # temperature: the calibrated logits the score was chosen on (pipeline.ood_selection).
        if card.ood_score == "msp" or not len(logits):
            ood = confidence
        else:  # entropy or energy
            ood = ood_score(card.ood_score, logits)
        stats: dict[str, np.ndarray] = {}
        unlike_training = np.zeros(len(images), dtype=bool)
        if self._input_counts is not None and len(images):
            stats = input_statistics(images)
            edges = card.input_reference.edges  # type: ignore[union-attr]
            unlike_training = atypical(stats, edges, self._input_counts)
        if card.feature_reference is not None and len(images):
            norms = np.concatenate([c[2] for c in chunks])
            stats[FEATURE_STATISTIC] = norm_rank(norms, card.feature_reference.quantiles)
        return Predictions(
            probabilities=probs,
            predicted=predicted,
            confidence=confidence,
            entropy=entropy(probs),
            ood_score=ood,
            atypical=unlike_training,
            is_ood=(ood < card.ood_threshold) | unlike_training,
            input_stats=stats or None,
            top_k=top_k(probs, self.top_k),
        )

    def records(self, predictions: Predictions) -> list[dict[str, Any]]:
        """One JSON-ready mapping per item with the fields the service returns."""
        names = self.card.class_names
        return [
            {
                "class_index": int(predictions.predicted[i]),
                "class_name": names[predictions.predicted[i]],
                "confidence": float(predictions.confidence[i]),
                "top_k": [
                    {
                        "class_index": int(j),
                        "class_name": names[j],
                        "probability": float(predictions.probabilities[i, j]),
                    }
                    for j in predictions.top_k[i]
                ],
                "entropy": float(predictions.entropy[i]),
                "is_ood": bool(predictions.is_ood[i]),
                "model_version": self.card.model_version,
            }
            for i in range(len(predictions))
        ]

    def warm_up(self) -> None:
        """Run one batch of two blank images so the first request pays no start-up cost."""
        self.predict(np.zeros((2, *self.image_shape), dtype=np.uint8), batch_size=2)
