"""The drift tests' model and traffic: small_cnn on faint quadrant images, with a card measured
as the evaluate stage measures it, and the in-distribution and shifted images sent to it.

The model is small_cnn trained on *faint* quadrant images (the lit quadrant only 40 grey levels
above pixel noise of 0..215): unlike the conftest's high-contrast quadrants, on which the network
is right and certain on every image (so the fitted temperature collapses to its lower bound and
every confidence is 1.0), this task leaves it a few percent of errors, so temperature scaling
means something and the reference histogram has a shape. The card is built as the evaluate
stage builds it, from ONNX Runtime outputs of the exported model: temperature fitted on a
validation set, OOD threshold at 95% TPR of the validation confidences, reference histogram,
mean, accuracy and ECE from a test set. ``tests/serving/conftest.py`` serves it as the
``calibrated_model`` fixture.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.config import read_params
from pipeline.drift import bin_counts
from pipeline.images import fit_image
from pipeline.model_card import INPUT_NAME, ModelCard, ReferenceConfidence
from pipeline.preprocessing import channel_stats, to_model_input
from tests.serving.conftest import CLASS_NAMES, ROOT, SIZE, ExportedModel, train_toy_model

CPU = "CPUExecutionProvider"
# Faint quadrants: the lit quadrant is BOOST grey levels above uniform noise in [0, 255 - BOOST].
BOOST = 40
# Predictions per worker in the rolling window, and per phase below: each phase fills the window
# exactly, so after it the window holds that phase's images and nothing else. 400 keeps the
# sampling noise of an 18-bin PSI well under the threshold (about 0.04 typical on fresh ID data).
WINDOW = 400
SEEDS = {"train": 0, "val": 1, "test": 2, "id_traffic": 3, "noise": 7}


def faint_quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, SIZE, SIZE, 1): class k has quadrant k BOOST levels brighter than the rest."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASS_NAMES)
    images = rng.integers(0, 256 - BOOST, size=(n, SIZE, SIZE, 1), dtype=np.uint8)
    half = SIZE // 2
    for k in range(len(CLASS_NAMES)):
        r, c = divmod(k, 2)
        images[labels == k, r * half : (r + 1) * half, c * half : (c + 1) * half] += BOOST
    return images, labels


@functools.cache
def digit_images() -> np.ndarray:
    """The first WINDOW of scikit-learn's 8x8 digits (bundled, offline), as uint8 (n, 8, 8, 1)."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:WINDOW]  # 0..16
    return np.rint(digits * (255 / 16)).astype(np.uint8)[..., None]


def noise_images() -> np.ndarray:
    """Uniform noise over the full grey range, at the model's size: no quadrant stands out."""
    rng = np.random.default_rng(SEEDS["noise"])
    return rng.integers(0, 256, size=(WINDOW, SIZE, SIZE, 1), dtype=np.uint8)


def fit_all(images: np.ndarray, card: ModelCard) -> np.ndarray:
    """Each image fitted to the model as the service fits an uploaded one."""
    height, width, channels = card.image_shape
    return np.stack([fit_image(im, (height, width), channels, card.resize) for im in images])


def ort_probabilities(path: Path, card: ModelCard, images: np.ndarray) -> np.ndarray:
    """Calibrated probabilities from ONNX Runtime, with the service's preprocessing."""
    fitted = fit_all(images, card)
    session = ort.InferenceSession(str(path), providers=[CPU])
    x = to_model_input(fitted, card.mean, card.std)
    return session.run(["probabilities"], {INPUT_NAME: x})[0]


def build_calibrated_model(folder: Path) -> ExportedModel:
    """small_cnn on faint quadrants, exported with a card measured as the evaluate stage does."""
    import torch

    from pipeline.calibration import fit_temperature
    from pipeline.export import export_onnx
    from pipeline.metrics.calibration import expected_calibration_error
    from pipeline.metrics.ood import threshold_at_tpr

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a busy machine: more threads only contend
    try:
        images, labels = faint_quadrant_images(512, SEEDS["train"])
        mean, std = channel_stats(images)
        model = train_toy_model(images, labels, mean, std)
        val_images, val_labels = faint_quadrant_images(1000, SEEDS["val"])
        with torch.no_grad():
            val_logits = model(torch.from_numpy(to_model_input(val_images, mean, std))).numpy()
        temperature = fit_temperature(val_logits, val_labels).temperature

        edges = read_params(ROOT / "params.yaml")["evaluate"]["reference_edges"]
        placeholder = ModelCard(
            dataset="faint_quadrants",
            class_names=CLASS_NAMES,
            image_shape=[SIZE, SIZE, 1],
            resize="resize_shorter_then_center_crop",
            mean=mean,
            std=std,
            temperature=temperature,
            ood_threshold=0.5,
            ood_tpr=0.95,
            reference_confidence=ReferenceConfidence(
                bin_edges=edges, counts=[1] * (len(edges) - 1), mean=0.5
            ),
            test_accuracy=50.0,
            test_ece=0.0,
            model_version="drift-draft",
        )
        draft = folder / "draft.onnx"
        export_onnx(model, placeholder, draft)

        # What the evaluate stage measures, here on the exported graph itself.
        val_conf = ort_probabilities(draft, placeholder, val_images).max(axis=1)
        test_images, test_labels = faint_quadrant_images(2000, SEEDS["test"])
        test_probs = ort_probabilities(draft, placeholder, test_images)
        test_conf = test_probs.max(axis=1).astype(np.float64)
        card = dataclasses.replace(
            placeholder,
            ood_threshold=threshold_at_tpr(val_conf, 0.95),
            reference_confidence=ReferenceConfidence(
                bin_edges=edges,
                counts=bin_counts(test_conf, edges).tolist(),
                mean=float(test_conf.mean()),
            ),
            test_accuracy=100.0 * float(np.mean(test_probs.argmax(axis=1) == test_labels)),
            test_ece=100.0 * expected_calibration_error(test_probs, test_labels),
            model_version="drift-0001",
        )
        path = folder / "model.onnx"
        export_onnx(model, card, path)
    finally:
        torch.set_num_threads(threads)
    return ExportedModel(path, card)
