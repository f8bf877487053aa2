"""Typed configuration: one frozen dataclass per ``params.yaml`` section.

Parsing is strict: an unknown key, a missing key, a value of the wrong type or an impossible
value stops with a :class:`ConfigError` that names the key (as ``section.key``) and the value
that arrived. Defaults live only in ``params.yaml``; no field here has one.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from pipeline.drift import check_edges

FOLDER = "folder"  # data.dataset of a user's image folder
FOLDER_OOD_PREFIX = "folder:"  # data.ood entry naming a folder of OOD images, any layout
LOSSES = ("ce", "ls", "focal", "mixup", "mrl", "mndcg")


def _registry(module: str, name: str) -> tuple[Any, ...]:
    """The names a registry in ``module`` defines, where the code implementing them lives.

    Imported only when a section that needs it is parsed: the service parses ``serve`` alone
    and must not import torch or SciPy.
    """
    return tuple(getattr(importlib.import_module(module), name))


class ConfigError(ValueError):
    """A parameter is unknown, missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class DataConfig:
    """``data`` section: which dataset, how it is split, which OOD sets accompany it.

    ``root``, ``image_size``, ``channels`` and ``on_error`` describe a ``folder`` dataset (a
    user's ``root/<class>/<image>`` tree) and are ignored for the built-in ones; ``resize`` is
    also how the service fits a photo of any size to the model, for every dataset.
    """

    dataset: str
    root: str
    image_size: list[int]
    channels: int
    resize: Literal["resize_shorter_then_center_crop", "stretch"]
    on_error: Literal["error", "skip"]
    workers: int | None
    ood: list[str]
    val_fraction: float
    test_fraction: float
    seed: int
    max_train: int | None
    max_test: int | None

    def __post_init__(self) -> None:
        ids = _registry("pipeline.data.readers", "ID_DATASETS")
        _choice("data.dataset", self.dataset, (*ids, FOLDER))
        ood_names = _registry("pipeline.data.ood", "OOD_NAMES")
        for name in self.ood:
            if not (name.startswith(FOLDER_OOD_PREFIX) and len(name) > len(FOLDER_OOD_PREFIX)):
                _choice("data.ood", name, (*ood_names, f"{FOLDER_OOD_PREFIX}<path>"))
        _check("data.root", self.root, bool(self.root.strip()), "a folder path")
        ok = len(self.image_size) == 2 and min(self.image_size) >= 4
        _check("data.image_size", self.image_size, ok, "[height, width], each >= 4")
        _choice("data.channels", self.channels, (1, 3))
        if self.workers is not None:
            _check("data.workers", self.workers, self.workers >= 1, ">= 1 or null")
        _check("data.val_fraction", self.val_fraction, 0 < self.val_fraction < 1, "in (0, 1)")
        _check("data.test_fraction", self.test_fraction, 0 < self.test_fraction < 1, "in (0, 1)")
        _check(
            "data.test_fraction",
            self.test_fraction,
            self.val_fraction + self.test_fraction < 1,
            f"below 1 - data.val_fraction ({1 - self.val_fraction:g})",
        )
        for key in ("max_train", "max_test"):
            value = getattr(self, key)
            _check(f"data.{key}", value, value is None or value >= 10, ">= 10 or null")


@dataclass(frozen=True)
class ModelConfig:
    """``model`` section: the architecture and whether it starts from pretrained weights.

    ``arch`` is one of our own networks (``small_cnn``, ``resnet18``, ...), ``tv:<name>`` (a
    torchvision classifier) or ``timm:<name>`` (a timm model); :func:`pipeline.models.check_arch`
    is the single registry. ``pretrained`` downloads the backbone's weights (torchvision/timm
    only).
    """

    arch: str
    pretrained: bool

    def __post_init__(self) -> None:
        check_arch = importlib.import_module("pipeline.models").check_arch
        try:
            check_arch(self.arch)
        except ValueError as err:
            raise ConfigError(f"model.arch: {err}") from None
        if self.pretrained and ":" not in self.arch:
            raise ConfigError(
                f"model.pretrained is true but model.arch {self.arch!r} is one of our own "
                "networks, which have no pretrained weights; use tv:<name> or timm:<name>"
            )


@dataclass(frozen=True)
class LossConfig:
    """``loss`` section: the training objective and its mixing.

    ``mrl_mask`` picks between the official implementation's behaviour (``faithful``: the
    same-class mask only rescales the loss by the share of valid pairs) and a true per-sample mask
    (``per_sample``). ``mrl_copies`` > 1 is our extension: the official MRL crashes on shapes with
    more than one mixed copy, so its faithful setting is 1.
    """

    name: str
    weight: float
    mixing: Literal["mixup", "cutmix", "manifold"]
    alpha: float
    margin: float
    num_mixes: int
    mrl_copies: int
    mrl_mask: Literal["faithful", "per_sample"]
    manifold_layer: int | None
    smoothing: float
    focal_gamma: float

    def __post_init__(self) -> None:
        _choice("loss.name", self.name, LOSSES)
        _check("loss.weight", self.weight, self.weight >= 0, ">= 0")
        _check("loss.alpha", self.alpha, self.alpha > 0, "> 0")
        _check("loss.margin", self.margin, self.margin >= 0, ">= 0")
        _check("loss.num_mixes", self.num_mixes, self.num_mixes >= 1, ">= 1")
        _check("loss.mrl_copies", self.mrl_copies, self.mrl_copies >= 1, ">= 1")
        _check("loss.smoothing", self.smoothing, 0 <= self.smoothing < 1, "in [0, 1)")
        _check("loss.focal_gamma", self.focal_gamma, self.focal_gamma >= 0, ">= 0")
        if self.manifold_layer is not None:
            _check("loss.manifold_layer", self.manifold_layer, self.manifold_layer >= 0, ">= 0")

    @property
    def copies(self) -> int:
        """Mixed copies one step forwards: 0 without mixing, 1 for ``mixup``."""
        return {"mndcg": self.num_mixes, "mrl": self.mrl_copies, "mixup": 1}.get(self.name, 0)


@dataclass(frozen=True)
class TrainConfig:
    """``train`` section: optimisation loop."""

    epochs: int
    batch_size: int
    lr: float
    backbone_lr_scale: float
    momentum: float
    weight_decay: float
    nesterov: bool
    schedule: Literal["multistep", "cosine"]
    milestones: list[int]
    lr_gamma: float
    grad_clip: float | None
    augment: Literal["crop_flip", "crop", "none"]
    device: Literal["auto", "cpu", "cuda"]
    bf16: bool
    seed: int
    threads: int | None

    def __post_init__(self) -> None:
        _check("train.epochs", self.epochs, self.epochs >= 1, ">= 1")
        _check("train.batch_size", self.batch_size, self.batch_size >= 2, ">= 2")
        _check("train.lr", self.lr, self.lr > 0, "> 0")
        ok = 0 < self.backbone_lr_scale <= 1
        _check("train.backbone_lr_scale", self.backbone_lr_scale, ok, "in (0, 1]")
        _check("train.momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")
        _check("train.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        _check("train.lr_gamma", self.lr_gamma, 0 < self.lr_gamma <= 1, "in (0, 1]")
        ok = all(0 < m < self.epochs for m in self.milestones) and self.milestones == sorted(
            self.milestones
        )
        _check("train.milestones", self.milestones, ok, "increasing and inside (0, epochs)")
        if self.nesterov:
            _check("train.momentum", self.momentum, self.momentum > 0, "> 0 with nesterov")
        if self.grad_clip is not None:
            _check("train.grad_clip", self.grad_clip, self.grad_clip > 0, "> 0 or null")
        if self.threads is not None:
            _check("train.threads", self.threads, self.threads >= 1, ">= 1 or null")


@dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate`` section: calibration bins, OOD threshold, shift study, serving reference."""

    n_bins: int
    batch_size: int
    ood_tpr: float
    corruptions: list[str]
    severities: list[int]
    shift_images: int | None
    reference_edges: list[float]

    def __post_init__(self) -> None:
        _check("evaluate.n_bins", self.n_bins, self.n_bins >= 1, ">= 1")
        _check("evaluate.batch_size", self.batch_size, self.batch_size >= 1, ">= 1")
        _check("evaluate.ood_tpr", self.ood_tpr, 0 < self.ood_tpr < 1, "in (0, 1)")
        corruptions = _registry("pipeline.data.corruptions", "CORRUPTIONS")
        for name in self.corruptions:
            _choice("evaluate.corruptions", name, corruptions)
        for level in self.severities:
            _check("evaluate.severities", self.severities, 1 <= level <= 5, "in 1..5")
        if self.shift_images is not None:
            _check("evaluate.shift_images", self.shift_images, self.shift_images >= 10, ">= 10")
        try:
            check_edges(self.reference_edges)
        except ValueError as err:
            raise ConfigError(f"evaluate.reference_edges: {err}") from None


@dataclass(frozen=True)
class TunedRun:
    """A named study row with RankMixup settings found on the validation split."""

    name: str
    loss: str
    weight: float
    margin: float
    alpha: float
    num_mixes: int
    mrl_mask: Literal["faithful", "per_sample"]

    def __post_init__(self) -> None:
        _choice("study.tuned.loss", self.loss, ("mrl", "mndcg"))
        _check("study.tuned.weight", self.weight, self.weight >= 0, ">= 0")
        _check("study.tuned.margin", self.margin, self.margin >= 0, ">= 0")
        _check("study.tuned.alpha", self.alpha, self.alpha > 0, "> 0")
        _check("study.tuned.num_mixes", self.num_mixes, self.num_mixes >= 1, ">= 1")


@dataclass(frozen=True)
class StudyConfig:
    """``study`` section: the regime of the loss comparison (``make study``).

    The other sections supply everything else (dataset, model, optimiser, loss settings), so the
    study differs from the main run only in what is named here.
    """

    max_train: int
    epochs: int
    augment: Literal["crop_flip", "crop", "none"]
    losses: list[str]
    tuned: list[TunedRun]

    def __post_init__(self) -> None:
        _check("study.max_train", self.max_train, self.max_train >= 10, ">= 10")
        _check("study.epochs", self.epochs, self.epochs >= 1, ">= 1")
        _check("study.losses", self.losses, len(self.losses) >= 1, "a non-empty list")
        for name in self.losses:
            _choice("study.losses", name, LOSSES)


@dataclass(frozen=True)
class ServeConfig:
    """``serve`` section: the HTTP service's limits, batching and drift window (``serving/``)."""

    port: int
    workers: int
    batching: bool
    max_batch_size: int
    max_latency_ms: int
    top_k: int
    window: int
    min_predictions: int
    max_request_bytes: int
    max_image_pixels: int
    max_batch_items: int
    max_concurrency: int
    timeout_s: float

    def __post_init__(self) -> None:
        _check("serve.port", self.port, 1 <= self.port <= 65535, "in 1..65535")
        _check("serve.workers", self.workers, self.workers >= 1, ">= 1")
        _check("serve.max_batch_size", self.max_batch_size, self.max_batch_size >= 1, ">= 1")
        _check("serve.max_latency_ms", self.max_latency_ms, self.max_latency_ms >= 1, ">= 1")
        _check("serve.top_k", self.top_k, self.top_k >= 1, ">= 1")
        _check("serve.window", self.window, self.window >= 10, ">= 10")
        _check(
            "serve.min_predictions",
            self.min_predictions,
            1 <= self.min_predictions <= self.window,
            f"in 1..serve.window ({self.window}): a window never holds more",
        )
        _check(
            "serve.max_request_bytes",
            self.max_request_bytes,
            self.max_request_bytes >= 1024,
            ">= 1024",
        )
        _check("serve.max_image_pixels", self.max_image_pixels, self.max_image_pixels >= 1, ">= 1")
        _check("serve.max_batch_items", self.max_batch_items, self.max_batch_items >= 1, ">= 1")
        _check("serve.max_concurrency", self.max_concurrency, self.max_concurrency >= 1, ">= 1")
        _check("serve.timeout_s", self.timeout_s, self.timeout_s > 0, "> 0")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "study": StudyConfig,
    "serve": ServeConfig,
}

T = TypeVar("T")


def read_params(path: Path | str) -> dict[str, Any]:
    """Read a params file and reject unknown top-level sections."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist")
    with path.open() as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown params section(s) {unknown}; known: {sorted(SECTIONS)}")
    return raw


def load_section(params: dict[str, Any], name: str) -> Any:
    """Parse section ``name`` of ``params`` into its dataclass."""
    if name not in SECTIONS:
        raise ConfigError(f"unknown params section {name!r}; known: {sorted(SECTIONS)}")
    if name not in params:
        raise ConfigError(f"params section {name!r} is missing")
    return parse_dataclass(SECTIONS[name], params[name], name)


def parse_dataclass(cls: type[T], raw: Any, prefix: str) -> T:
    """Build ``cls`` from a mapping, checking keys and value types strictly."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {[f'{prefix}.{k}' for k in unknown]}; known: {fields}")
    missing = [k for k in fields if k not in raw]
    if missing:
        raise ConfigError(f"missing key(s) {[f'{prefix}.{k}' for k in missing]}")
    values = {k: _coerce(f"{prefix}.{k}", raw[k], hints[k]) for k in fields}
    return cls(**values)


# A number in exponent notation without a dot, which YAML 1.1 leaves a string: 1e-3, 5E+2.
_YAML_FLOAT_STRING = re.compile(r"[-+]?\d+[eE][-+]?\d+")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is Literal:
        _choice(key, value, args)
        return value
    if dataclasses.is_dataclass(hint):
        return parse_dataclass(hint, value, key)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _YAML_FLOAT_STRING.fullmatch(value.strip()):
        # PyYAML follows YAML 1.1, which reads 1e-3 (no dot) as a string; it is a number.
        return float(value)
    # bool is an int subclass: refuse True where a number is expected and vice versa.
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key} must be of type {hint.__name__}, got {value!r}")
    return value


def _choice(key: str, value: Any, options: tuple[Any, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key} must be one of {list(options)}, got {value!r}")


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
