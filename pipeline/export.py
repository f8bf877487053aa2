"""Export a trained classifier to ONNX with temperature scaling and softmax inside the graph.

The exported graph takes normalised ``float32`` images ``(N, C, H, W)`` (input
:data:`~pipeline.model_card.INPUT_NAME`, dynamic batch) and returns ``logits`` already divided by
the fitted temperature and their softmax, ``probabilities``. The :class:`ModelCard` travels in the
model's metadata, so a served model carries its own calibration and monitoring reference.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from pipeline.io import atomic_path
from pipeline.model_card import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ModelCard

logger = logging.getLogger(__name__)

# The dynamo exporter needs opset 18 or newer.
OPSET = 18


class CalibratedNet(nn.Module):
    """``net`` followed by division by a fixed temperature and a softmax.

    References:
        Guo et al. 2017, "On Calibration of Modern Neural Networks" (temperature scaling).

    Args:
        net: Classifier returning logits.
        temperature: Fitted temperature T > 0; outputs are ``z / T`` and ``softmax(z / T)``.
    """

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.net = net
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return calibrated logits and probabilities for ``images``."""
        logits = self.net(images) * self.inv_temperature
        return logits, torch.softmax(logits, dim=1)


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
    net = CalibratedNet(model, card.temperature).to("cpu", torch.float32).eval()
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
            output_names=list(OUTPUT_NAMES),
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
