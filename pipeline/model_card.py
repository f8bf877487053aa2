"""The model card: everything serving needs besides the network, stored inside the ONNX file.

The export stage writes it into the ONNX model's metadata (key :data:`METADATA_KEY`, JSON), and
the service reads it back from there, so the served model cannot disagree with the temperature,
classes, normalisation, OOD score and threshold or reference distribution it was evaluated with.
NumPy and the standard library only: the serving image has no torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.config import STRICT_KEYS, ConfigError, Float, Int, Str, parse_dataclass
from pipeline.drift import check_edges
from pipeline.feature_norm import LEVELS, check_quantiles
from pipeline.images import check_resize_policy
from pipeline.input_stats import STATISTICS as INPUT_STATISTICS

METADATA_KEY = "rankcal"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")
# The third output of graphs exported with a feature reference (pipeline.feature_norm).
FEATURE_OUTPUT = "feature_norm"


@dataclass(frozen=True)
class ReferenceConfidence:
    """Histogram of calibrated top-1 confidence on the held-out images, validation and test
    (``lo < c <= hi`` bins); cards of models evaluated before 2026-12-08 hold the test set's."""

    __pydantic_config__ = STRICT_KEYS

    bin_edges: list[Float]
    counts: list[Int]
    mean: Float

    def __post_init__(self) -> None:
        try:
            check_edges(self.bin_edges)
        except ValueError as err:
            raise ConfigError(f"reference_confidence.bin_edges: {err}") from None
        if len(self.counts) != len(self.bin_edges) - 1 or sum(self.counts) <= 0:
            raise ConfigError(
                f"reference_confidence.counts needs {len(self.bin_edges) - 1} counts with a "
                f"positive total, got {self.counts}"
            )


@dataclass(frozen=True)
class InputReference:
    """Histograms of the input statistics (:mod:`pipeline.input_stats`) on the training split,
    counts per bin ``(edges[i], edges[i + 1]]``."""

    __pydantic_config__ = STRICT_KEYS

    edges: list[Float]
    mean: list[Int]
    contrast: list[Int]
    dark_share: list[Int]
    bright_share: list[Int]

    def __post_init__(self) -> None:
        try:
            check_edges(self.edges)
        except ValueError as err:
            raise ConfigError(f"input_reference.edges: {err}") from None
        for name in INPUT_STATISTICS:
            counts = getattr(self, name)
            if len(counts) != len(self.edges) - 1 or sum(counts) <= 0 or min(counts) < 0:
                raise ConfigError(
                    f"input_reference.{name} needs {len(self.edges) - 1} non-negative counts "
                    f"with a positive total, got {counts}"
                )

    def counts(self, name: str) -> list[int]:
        """The histogram of statistic ``name``."""
        if name not in INPUT_STATISTICS:
            raise KeyError(f"unknown input statistic {name!r}; known: {INPUT_STATISTICS}")
        return list(getattr(self, name))


@dataclass(frozen=True)
class FeatureReference:
    """The training split's feature norms (:mod:`pipeline.feature_norm`): their deciles, and how
    many training images' ranks fall in each tenth of [0, 1] (the bins ``(i/10, (i+1)/10]``)."""

    __pydantic_config__ = STRICT_KEYS

    quantiles: list[Float]
    counts: list[Int]

    def __post_init__(self) -> None:
        try:
            check_quantiles(self.quantiles)
        except ValueError as err:
            raise ConfigError(f"feature_reference.quantiles: {err}") from None
        bins = len(LEVELS) - 1
        if len(self.counts) != bins or sum(self.counts) <= 0 or min(self.counts) < 0:
            raise ConfigError(
                f"feature_reference.counts needs {bins} non-negative counts with a positive "
                f"total, got {self.counts}"
            )


@dataclass(frozen=True)
class ModelCard:
    """What the evaluate stage measured and serving must apply, with the model's version.

    ``image_shape`` is ``(H, W, C)`` of the model input and ``resize`` how a photo of any size
    is fitted to it (:func:`pipeline.images.fit_image`, as the data stage did); ``mean`` and
    ``std`` are per channel on the [0, 1] scale, and ``normalize`` says where they come from
    (``model.normalize``: the training split's statistics, or the fixed scaling the pretrained
    weights expect); ``temperature`` is already folded into the ONNX
    graph's outputs and is kept for the record; accuracies and ECE are percent, as in
    ``metrics/eval.json``.
    """

    __pydantic_config__ = STRICT_KEYS

    dataset: Str
    class_names: list[Str]
    image_shape: list[Int]
    resize: Str
    mean: list[Float]
    std: list[Float]
    temperature: Float
    ood_threshold: Float
    ood_tpr: Float
    reference_confidence: ReferenceConfidence
    test_accuracy: Float
    test_ece: Float
    model_version: Str
    # The score is_ood compares with ood_threshold (pipeline.ood_selection); cards written before
    # the score was chosen flagged by calibrated confidence, hence the default.
    ood_score: Literal["msp", "entropy", "energy"] = "msp"
    # Where mean and std come from; cards written before model.normalize existed used the
    # training split's statistics.
    normalize: Literal["dataset", "imagenet", "symmetric"] = "dataset"
    # Reference histograms of the input statistics; cards written before they existed have none
    # (the service then exports no input drift).
    input_reference: InputReference | None = None
    # The feature-norm reference; with it the ONNX graph has the FEATURE_OUTPUT output. None for
    # cards written before it existed and for networks whose logits no linear layer returns.
    feature_reference: FeatureReference | None = None

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ConfigError(f"image_shape must be (H, W, C), got {self.image_shape}")
        channels = self.image_shape[2]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ConfigError(f"mean/std need {channels} values, got {self.mean} / {self.std}")
        try:
            check_resize_policy(self.resize)
        except ValueError as err:
            raise ConfigError(f"model_card.resize: {err}") from None
        if len(self.class_names) < 2:
            raise ConfigError(f"need at least two class names, got {self.class_names}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.ood_score not in ("msp", "entropy", "energy"):
            raise ConfigError(
                f"ood_score must be 'msp', 'entropy' or 'energy', got {self.ood_score!r}"
            )

    @property
    def output_names(self) -> tuple[str, ...]:
        """The exported graph's outputs, in order."""
        return (*OUTPUT_NAMES, FEATURE_OUTPUT) if self.feature_reference else OUTPUT_NAMES

    @property
    def num_classes(self) -> int:
        """Number of classes the model predicts."""
        return len(self.class_names)

    def to_json(self) -> str:
        """Serialise, keys sorted so the same card always gives the same bytes."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse and validate a card; unknown or missing keys raise :class:`ConfigError`."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"model card is not JSON: {err}") from None
        if isinstance(raw, dict):
            raw.setdefault("ood_score", "msp")  # cards exported before it was chosen
            raw.setdefault("normalize", "dataset")  # ... before model.normalize existed
            raw.setdefault("input_reference", None)  # ... before input drift was measured
            raw.setdefault("feature_reference", None)  # ... before the feature norm was served
        return parse_dataclass(cls, raw, "model_card")

    @classmethod
    def from_reference(cls, reference: dict[str, Any], model_version: str) -> ModelCard:
        """Build from the evaluate stage's ``calibration.json`` mapping and a version string."""
        return parse_dataclass(cls, {**reference, "model_version": model_version}, "model_card")
