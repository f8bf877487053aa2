"""Export a trained classifier to ONNX with temperature scaling and softmax inside the graph.

The exported graph takes normalised ``float32`` images ``(N, C, H, W)`` (input
:data:`~pipeline.model_card.INPUT_NAME`, dynamic batch) and returns ``logits`` already divided by
the fitted temperature and their softmax, ``probabilities``; with a feature reference in the card,
also ``feature_norm``, the L2 norm of the features the last linear layer reads
(:mod:`pipeline.feature_norm`), which the service watches for drift. The :class:`ModelCard`
travels in the model's metadata, so a served model carries its own calibration and monitoring
reference.
:func:`verify_export` checks a written file against PyTorch and against the evaluate stage's ECE.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException
from torch import nn

from pipeline.config import ConfigError
from pipeline.inference import feature_norm, final_linear
from pipeline.io import atomic_path
from pipeline.metrics.calibration import expected_calibration_error
from pipeline.model_card import INPUT_NAME, METADATA_KEY, ModelCard
from pipeline.preprocessing import to_model_input

logger = logging.getLogger(__name__)

# The dynamo exporter needs opset 18 or newer.
OPSET = 18
# Batch sizes compared with PyTorch: 1 and one above the traced 2 prove the batch axis is dynamic.
PROBE_BATCHES = (1, 64)
PROB_ATOL = 1e-5  # largest |p_onnx - p_torch| accepted (float32 softmax)
NORM_RTOL = 1e-4  # largest |n_onnx - n_torch| / n_torch accepted for the feature norms
ECE_ATOL = 1e-4  # largest |ECE_onnx - ECE_evaluate| accepted, in percentage points
_ORT_ERRORS = (Fail, InvalidArgument, RuntimeException)


class CalibratedNet(nn.Module):
    """``net`` followed by division by a fixed temperature and a softmax.

    References:
        Guo et al. 2017, "On Calibration of Modern Neural Networks" (temperature scaling).

    Args:
        net: Classifier returning logits.
        temperature: Fitted temperature T > 0; outputs are ``z / T`` and ``softmax(z / T)``.
        feature_layer: A module of ``net`` (:func:`pipeline.inference.final_linear`): the L2 norm
            of its input is a third output; ``None`` for two outputs.
    """

    def __init__(
        self, net: nn.Module, temperature: float, feature_layer: nn.Module | None = None
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.net = net
        self.feature_layer = feature_layer
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return calibrated logits, probabilities and (with a feature layer) feature norms."""
        if self.feature_layer is None:
            logits = self.net(images) * self.inv_temperature
            return logits, torch.softmax(logits, dim=1)
        # A hook, not a changed network: any backbone's last linear layer works unchanged, and
        # the exporter traces the hook's Python like the rest of the forward pass.
        captured: list[torch.Tensor] = []
        handle = self.feature_layer.register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0])
        )
        try:
            logits = self.net(images) * self.inv_temperature
        finally:
            handle.remove()
        return logits, torch.softmax(logits, dim=1), feature_norm(captured[-1])


def calibrated_net(model: nn.Module, card: ModelCard) -> CalibratedNet:
    """A float32 CPU :class:`CalibratedNet` of a copy of ``model`` with the outputs ``card`` names.

    Raises:
        ExportError: If the card has a feature reference but no linear layer returns the logits.
    """
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    layer = None
    if card.feature_reference is not None:
        h, w, c = card.image_shape
        layer = final_linear(net, torch.zeros(2, c, h, w))
        if layer is None:
            raise ExportError(
                "the card has a feature reference, but no linear layer returns the logits"
            )
    return CalibratedNet(net, card.temperature, layer).eval()


def export_onnx(model: nn.Module, card: ModelCard, path: Path) -> None:
    """Write ``model`` with ``card``'s temperature baked in, and ``card`` as metadata, to ``path``.

    The graph is traced with a batch of 2 so the batch axis stays symbolic (a batch of 1 would
    be specialised to a constant). ``onnx.checker`` runs on the result before it is written; the
    file appears only once complete.

    Args:
        model: Trained classifier (any device; exported from a float32 CPU copy).
        card: The model card; its ``temperature`` and ``image_shape`` shape the graph.
        path: Destination ``.onnx`` file.

    Raises:
        onnx.checker.ValidationError: If the exported graph is invalid.
    """
    net = calibrated_net(model, card)
    h, w, c = card.image_shape
    dummy = torch.zeros(2, c, h, w)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        # The exporter is chatty about internal deprecations that do not affect the graph.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (dummy,),
            input_names=[INPUT_NAME],
            output_names=list(card.output_names),
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: card.to_json()})
    proto.doc_string = f"rankcal {card.dataset} classifier, version {card.model_version}"
    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    logger.info("exported %s (%d classes, T=%.4f)", path, card.num_classes, card.temperature)


class ExportError(RuntimeError):
    """An exported ONNX file failed a check; the message names the check and the numbers."""


def verify_export(
    path: Path,
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    card: ModelCard,
    expected_ece: float,
    n_bins: int,
    batch_size: int,
    probe_batches: Sequence[int] = PROBE_BATCHES,
) -> dict[str, Any]:
    """Check an exported file against PyTorch and against the evaluate stage's ECE.

    Checks, in order: ``onnx.checker``; input/output names, a symbolic batch axis and the card
    in the metadata; ONNX Runtime (CPU) at every ``probe_batches`` size against ``CalibratedNet``
    in PyTorch (float32, same preprocessed input): probabilities within :data:`PROB_ATOL` and
    identical argmax; the ECE of the ONNX probabilities on all of ``images`` against
    ``expected_ece`` within :data:`ECE_ATOL` (both in percent).

    Args:
        path: The ``.onnx`` file :func:`export_onnx` wrote.
        model: The network that was exported (not modified; a CPU float32 copy runs).
        images: uint8 test images (N, H, W, C), shaped as ``card.image_shape``.
        labels: Their classes (N,).
        card: The card the file was exported with.
        expected_ece: The evaluate stage's scaled test ECE (``test.scaled.ece``), in PERCENT.
        n_bins: Equal-width bins of that ECE (``evaluate.n_bins``).
        batch_size: Images per ONNX Runtime call on the whole set.
        probe_batches: Batch sizes compared with PyTorch (images repeat when N is smaller).

    Returns:
        The figures: opset, file size, batch sizes, largest differences, ECEs (percent).

    Raises:
        ExportError: If a check fails.
        ValueError: If ``images`` do not fit ``card`` or ``labels``.
    """
    if images.ndim != 4 or list(images.shape[1:]) != list(card.image_shape):
        raise ValueError(f"images must be (N, *{card.image_shape}), got {images.shape}")
    if len(images) == 0 or labels.shape != (len(images),):
        raise ValueError(f"need N >= 1 images and (N,) labels, got {images.shape}, {labels.shape}")
    opset = _check_graph(path, card)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    parity = _compare_with_torch(session, model, images, card, probe_batches)
    probs = _onnx_outputs(session, images, card, batch_size)[1]
    ece = 100.0 * expected_calibration_error(probs, labels, n_bins)  # percent, as eval.json
    if not abs(ece - expected_ece) <= ECE_ATOL:
        raise ExportError(
            f"ECE mismatch: ONNX {ece:.6f}% vs evaluate {expected_ece:.6f}% "
            f"(|diff| {abs(ece - expected_ece):.2e} points > {ECE_ATOL:g}; {n_bins} bins)"
        )
    return {
        "opset": opset,
        "onnx_bytes": Path(path).stat().st_size,
        **parity,
        "test_images": len(images),
        "accuracy_onnx": 100.0 * float(np.mean(probs.argmax(1) == labels)),
        "ece_onnx": ece,
        "ece_evaluate": expected_ece,
        "ece_abs_diff": abs(ece - expected_ece),
        "ece_unit": "percent",
        "n_bins": n_bins,
    }


def _check_graph(path: Path, card: ModelCard) -> int:
    """Run ``onnx.checker`` and check names, batch axis and metadata; return the opset."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejected {path}: {err}") from err
    proto = onnx.load_model(str(path), load_external_data=False)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(card.output_names):
        raise ExportError(
            f"graph names: expected inputs [{INPUT_NAME!r}] and outputs "
            f"{list(card.output_names)}, got {inputs} and {outputs}"
        )
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param:
        raise ExportError(f"batch axis is fixed to {batch_dim.dim_value}, expected symbolic")
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"metadata key {METADATA_KEY!r} missing; keys {sorted(props)}")
    try:
        stored = ModelCard.from_json(props[METADATA_KEY])
    except ConfigError as err:
        raise ExportError(f"metadata card is invalid: {err}") from err
    if stored != card:
        fields = [
            f.name
            for f in dataclasses.fields(card)
            if getattr(stored, f.name) != getattr(card, f.name)
        ]
        raise ExportError(f"metadata card differs from the expected card in {fields}")
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _onnx_outputs(
    session: ort.InferenceSession, images: np.ndarray, card: ModelCard, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and probabilities of uint8 ``images`` from ONNX Runtime, ``batch_size`` at a time."""
    logits, probs = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        z, p = _run(session, to_model_input(batch, card.mean, card.std))[:2]
        logits.append(z)
        probs.append(p)
    return np.concatenate(logits), np.concatenate(probs)


def _run(session: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
    """Every output of one ONNX Runtime call on model input ``x``, in the graph's order; a
    failure becomes an :class:`ExportError`."""
    try:
        return list(session.run(None, {INPUT_NAME: x}))
    except _ORT_ERRORS as err:
        raise ExportError(f"ONNX Runtime failed on a batch of {len(x)}: {err}") from err


def _compare_with_torch(
    session: ort.InferenceSession,
    model: nn.Module,
    images: np.ndarray,
    card: ModelCard,
    probe_batches: Sequence[int],
) -> dict[str, Any]:
    """ONNX Runtime against PyTorch at each probe batch size; raise on a mismatch."""
    net = calibrated_net(model, card)
    prob_diff = logit_diff = norm_diff = 0.0
    for size in probe_batches:
        x = to_model_input(images[np.arange(size) % len(images)], card.mean, card.std)
        onnx_out = _run(session, x)
        with torch.no_grad():
            torch_out = [t.numpy() for t in net(torch.from_numpy(x))]
        (z_onnx, p_onnx), (z_torch, p_torch) = onnx_out[:2], torch_out[:2]
        if p_onnx.shape != (size, card.num_classes):
            raise ExportError(f"probabilities of batch {size}: shape {p_onnx.shape}")
        diff = float(np.max(np.abs(p_onnx - p_torch)))
        agree = int(np.sum(p_onnx.argmax(1) == p_torch.argmax(1)))
        if not diff <= PROB_ATOL or agree != size:
            raise ExportError(
                f"ONNX vs PyTorch at batch {size}: max |prob diff| {diff:.3e} (limit "
                f"{PROB_ATOL:g}), argmax agrees on {agree}/{size}"
            )
        prob_diff = max(prob_diff, diff)
        logit_diff = max(logit_diff, float(np.max(np.abs(z_onnx - z_torch))))
        if len(onnx_out) > 2:
            n_onnx, n_torch = onnx_out[2], torch_out[2]
            rel = np.abs(n_onnx - n_torch) / np.maximum(np.abs(n_torch), 1e-12)
            worst = float(np.max(rel)) if n_onnx.shape == (size,) else float("inf")
            if not worst <= NORM_RTOL:
                raise ExportError(
                    f"ONNX vs PyTorch at batch {size}: feature norms of shape {n_onnx.shape}, "
                    f"max relative diff {worst:.3e} (limit {NORM_RTOL:g})"
                )
            norm_diff = max(norm_diff, worst)
    figures = {
        "batch_sizes": list(probe_batches),
        "max_abs_prob_diff": prob_diff,
        "max_abs_logit_diff": logit_diff,
        "argmax_agreement": 1.0,
    }
    if card.feature_reference is not None:
        figures["max_rel_feature_norm_diff"] = norm_diff
    return figures
