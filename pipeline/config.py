"""Typed configuration: one frozen dataclass per ``params.yaml`` section, parsed by pydantic.

Parsing is strict: an unknown key, a missing key, a value of the wrong type or an impossible
value stops with a :class:`ConfigError` that names the key (as ``section.key``) and the value
that arrived. Defaults live only in ``params.yaml``; no field here has one.

pydantic checks keys and types (strict scalars: no ``"5"`` for a number, no ``1`` for a
boolean), each dataclass's ``__post_init__`` the ranges and relations, and pydantic's errors are
rewritten into one :class:`ConfigError` line. The same types give ``params.schema.json``
(:func:`params_schema`), the JSON schema an editor validates ``params.yaml`` with.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BeforeValidator, ConfigDict, Strict, TypeAdapter, ValidationError

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


# A number in exponent notation without a dot, which YAML 1.1 leaves a string: 1e-3, 5E+2.
_YAML_FLOAT_STRING = re.compile(r"[-+]?\d+[eE][-+]?\d+")


def _yaml_number(value: Any) -> Any:
    """PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a string; it is a number."""
    if isinstance(value, str) and _YAML_FLOAT_STRING.fullmatch(value.strip()):
        return float(value)
    return value


# Strict scalars: a string is no number and 1 is no boolean (pydantic's default would convert
# both); an int is a float.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), BeforeValidator(_yaml_number)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
# Every section refuses keys it does not know.
STRICT_KEYS = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DataConfig:
    """``data`` section: which dataset, how it is split, which OOD sets accompany it.

    ``root``, ``image_size``, ``channels`` and ``on_error`` describe a ``folder`` dataset (a
    user's ``root/<class>/<image>`` tree) and are ignored for the built-in ones; ``resize`` is
    also how the service fits a photo of any size to the model, for every dataset.
    """

    __pydantic_config__ = STRICT_KEYS

    dataset: Str
    root: Str
    image_size: list[Int]
    channels: Int
    resize: Literal["resize_shorter_then_center_crop", "stretch"]
    on_error: Literal["error", "skip"]
    workers: Int | None
    ood: list[Str]
    val_fraction: Float
    test_fraction: Float
    seed: Int
    max_train: Int | None
    max_test: Int | None

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
    """``model`` section: the architecture, the weights it starts from, the input it expects.

    ``arch`` is one of our own networks (``small_cnn``, ``resnet18``, ...), ``tv:<name>`` (a
    torchvision classifier) or ``timm:<name>`` (a timm model); :func:`pipeline.models.check_arch`
    is the single registry. A ``tv:``/``timm:`` backbone starts from pretrained weights one of two
    ways: ``pretrained`` fetches the library's published ones (the hub, once), ``weights`` loads
    a local file (:mod:`pipeline.models.weights`). ``normalize`` is the input scaling the
    weights expect (:data:`pipeline.preprocessing.NORMALIZATIONS`): applied by the data stage's
    statistics, so training, evaluation, the export and the service all use it.
    """

    __pydantic_config__ = STRICT_KEYS

    arch: Str
    pretrained: Bool
    weights: Str | None
    normalize: Literal["dataset", "imagenet", "symmetric"]

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
        if self.weights is not None:
            _check("model.weights", self.weights, bool(self.weights.strip()), "a file path or null")
            if ":" not in self.arch:
                raise ConfigError(
                    f"model.weights is set but model.arch {self.arch!r} is one of our own "
                    "networks; weights files load into tv:<name> or timm:<name> backbones"
                )
            if self.pretrained:
                raise ConfigError(
                    "model.weights and model.pretrained both give pretrained weights: set "
                    "model.pretrained: false to load the file, or model.weights: null to fetch "
                    "the library's weights"
                )


@dataclass(frozen=True)
class LossConfig:
    """``loss`` section: the training objective and its mixing.

    ``mrl_mask`` picks between the official implementation's behaviour (``faithful``: the
    same-class mask only rescales the loss by the share of valid pairs) and a true per-sample mask
    (``per_sample``). ``mrl_copies`` > 1 is our extension: the official MRL crashes on shapes with
    more than one mixed copy, so its faithful setting is 1. ``mixed_bn`` says whether the
    mixed pass moves BatchNorm's running statistics (``update``, as the official code) or leaves
    them to the raw images the model is evaluated on (``freeze``; :mod:`pipeline.objective`).
    """

    __pydantic_config__ = STRICT_KEYS

    name: Str
    weight: Float
    mixing: Literal["mixup", "cutmix", "manifold"]
    alpha: Float
    margin: Float
    num_mixes: Int
    mrl_copies: Int
    mrl_mask: Literal["faithful", "per_sample"]
    mixed_bn: Literal["update", "freeze"]
    manifold_layer: Int | None
    smoothing: Float
    focal_gamma: Float

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
        if self.name == "mixup" and self.mixed_bn == "freeze":
            # Mixup forwards only mixed images: frozen, the statistics would stay at their
            # initial values (mean 0, variance 1) and evaluation would use those.
            raise ConfigError(
                "loss.mixed_bn: freeze needs a raw pass to take BatchNorm's running statistics "
                "from, and loss mixup has none; use update (or recompute the statistics after "
                "training: train.bn_statistics: raw)"
            )

    @property
    def copies(self) -> int:
        """Mixed copies one step forwards: 0 without mixing, 1 for ``mixup``."""
        return {"mndcg": self.num_mixes, "mrl": self.mrl_copies, "mixup": 1}.get(self.name, 0)


@dataclass(frozen=True)
class TrainConfig:
    """``train`` section: optimisation loop, and the BatchNorm statistics the chosen model
    keeps (``bn_statistics``: those training accumulated, or recomputed after it by
    :mod:`pipeline.bn_statistics`). ``freeze_bn`` keeps BatchNorm in evaluation mode while
    training: a pretrained backbone's statistics normalise every batch and are never updated
    (its scale and shift still train)."""

    __pydantic_config__ = STRICT_KEYS

    epochs: Int
    batch_size: Int
    lr: Float
    backbone_lr_scale: Float
    momentum: Float
    weight_decay: Float
    nesterov: Bool
    schedule: Literal["multistep", "cosine"]
    milestones: list[Int]
    lr_gamma: Float
    grad_clip: Float | None
    augment: Literal["crop_flip", "crop", "photo", "none"]
    device: Literal["auto", "cpu", "cuda"]
    bf16: bool
    seed: Int
    threads: Int | None
    nproc_per_node: Int
    sync_batchnorm: Bool
    bn_statistics: Literal["trained", "raw", "mixed"]
    freeze_bn: Bool

    def __post_init__(self) -> None:
        _check("train.epochs", self.epochs, self.epochs >= 1, ">= 1")
        ok = self.nproc_per_node >= 1
        _check("train.nproc_per_node", self.nproc_per_node, ok, ">= 1")
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

    __pydantic_config__ = STRICT_KEYS

    n_bins: Int
    batch_size: Int
    ood_tpr: Float
    corruptions: list[Str]
    severities: list[Int]
    shift_images: Int | None
    reference_edges: list[Float]

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
class RankingSettings:
    """RankMixup's settings of study rows: the ranking weight w, the MRL margin m, the mixing
    coefficient's Beta(alpha, alpha), M-NDCG's mixed copies N, MRL's mask and whether the mixed
    pass updates BatchNorm's running statistics.

    ``study.paper`` holds the paper's, which the plain rows (``study.losses``) train with; each
    tuned row names its own. The study takes none of them from the ``loss`` section, so the
    pipeline's defaults can follow the study's evidence without changing what a row measures.
    """

    __pydantic_config__ = STRICT_KEYS
    _key = "study.paper"  # how errors name the keys (not a field: it has no annotation)

    weight: Float
    margin: Float
    alpha: Float
    num_mixes: Int
    mrl_mask: Literal["faithful", "per_sample"]
    mixed_bn: Literal["update", "freeze"]

    def __post_init__(self) -> None:
        _check(f"{self._key}.weight", self.weight, self.weight >= 0, ">= 0")
        _check(f"{self._key}.margin", self.margin, self.margin >= 0, ">= 0")
        _check(f"{self._key}.alpha", self.alpha, self.alpha > 0, "> 0")
        _check(f"{self._key}.num_mixes", self.num_mixes, self.num_mixes >= 1, ">= 1")


@dataclass(frozen=True)
class TunedRun(RankingSettings):
    """A named study row with its own RankMixup settings: found on the validation split
    (bench/tune_rankmixup.py), or a variant of the paper's (e.g. ``mixed_bn: freeze``)."""

    __pydantic_config__ = STRICT_KEYS
    _key = "study.tuned"

    name: Str
    loss: Str

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("study.tuned.loss", self.loss, ("mrl", "mndcg"))


@dataclass(frozen=True)
class StudyConfig:
    """``study`` section: the regime of the loss comparison (``make study``).

    The other sections supply everything else (dataset, model, optimiser, the ``loss``
    section's mixing, smoothing and focal settings), so the study differs from the main run only
    in what is named here. The RankMixup settings are the study's own (``paper``, ``tuned``):
    the rows measure fixed settings whatever the pipeline's defaults are.
    """

    __pydantic_config__ = STRICT_KEYS

    max_train: Int
    val_fraction: Float
    epochs: Int
    augment: Literal["crop_flip", "crop", "photo", "none"]
    losses: list[Str]
    paper: RankingSettings
    tuned: list[TunedRun]
    seeds: list[Int]

    def __post_init__(self) -> None:
        _check("study.max_train", self.max_train, self.max_train >= 10, ">= 10")
        ok = 0 < self.val_fraction < 1
        _check("study.val_fraction", self.val_fraction, ok, "in (0, 1)")
        ok = len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)
        _check("study.seeds", self.seeds, ok, "a non-empty list without repeats")
        _check("study.epochs", self.epochs, self.epochs >= 1, ">= 1")
        _check("study.losses", self.losses, len(self.losses) >= 1, "a non-empty list")
        for name in self.losses:
            _choice("study.losses", name, LOSSES)


@dataclass(frozen=True)
class ServeConfig:
    """``serve`` section: the HTTP service's limits, batching and drift window (``serving/``)."""

    __pydantic_config__ = STRICT_KEYS

    port: Int
    workers: Int
    batching: Bool
    max_batch_size: Int
    max_latency_ms: Int
    top_k: Int
    window: Int
    min_predictions: Int
    max_request_bytes: Int
    max_image_pixels: Int
    max_batch_items: Int
    max_concurrency: Int
    timeout_s: Float
    feedback_max_age_s: Float
    feedback_replay_window_s: Float
    feedback_remembered: Int
    feedback_max_items: Int

    def __post_init__(self) -> None:
        _check("serve.port", self.port, 1 <= self.port <= 65535, "in 1..65535")
        _check(
            "serve.feedback_max_age_s", self.feedback_max_age_s, self.feedback_max_age_s > 0, "> 0"
        )
        ok = self.feedback_replay_window_s > 0
        _check("serve.feedback_replay_window_s", self.feedback_replay_window_s, ok, "> 0")
        ok = self.feedback_remembered >= 1
        _check("serve.feedback_remembered", self.feedback_remembered, ok, ">= 1")
        ok = self.feedback_max_items >= 1
        _check("serve.feedback_max_items", self.feedback_max_items, ok, ">= 1")
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
    """Build dataclass ``cls`` from a mapping with pydantic; any error is one :class:`ConfigError`
    naming the key as ``prefix.key`` (``prefix.list[i].key`` inside lists) and the value.

    Every problem pydantic finds of one kind is named (all unknown keys, all missing ones); a
    type error or an impossible value stops at the first.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix} must be a mapping, got {raw!r}")
    try:
        return _adapter(cls).validate_python(raw)
    except ValidationError as err:
        raise _config_error(cls, prefix, err.errors()) from None


@functools.cache
def _adapter(cls: type[T]) -> TypeAdapter[T]:
    return TypeAdapter(cls)


# pydantic's strict type errors, as the Python type they expected.
_TYPE_NAMES = {
    "int_type": "int",
    "float_type": "float",
    "bool_type": "bool",
    "string_type": "str",
    "list_type": "list",
}


def _config_error(cls: type, prefix: str, errors: list[Any]) -> ConfigError:
    """The first kind of problem in pydantic's ``errors``, worded as this module words it."""
    # dataclasses report "unexpected_keyword_argument" / "missing_argument", models the others
    extra = [e for e in errors if e["type"] in ("extra_forbidden", "unexpected_keyword_argument")]
    if extra:
        keys = [_key(prefix, e["loc"]) for e in extra]
        return ConfigError(f"unknown key(s) {keys}; known: {_fields_at(cls, extra[0]['loc'])}")
    missing = [e for e in errors if e["type"] in ("missing", "missing_argument")]
    if missing:
        return ConfigError(f"missing key(s) {[_key(prefix, e['loc']) for e in missing]}")
    first = errors[0]
    key, value = _key(prefix, first["loc"]), first.get("input")
    if first["type"] == "value_error" and isinstance(first.get("ctx", {}).get("error"), Exception):
        return ConfigError(str(first["ctx"]["error"]))  # a __post_init__ check: already worded
    if first["type"] in _TYPE_NAMES:
        return ConfigError(f"{key} must be of type {_TYPE_NAMES[first['type']]}, got {value!r}")
    if first["type"] == "literal_error":
        return ConfigError(f"{key} must be one of {first['ctx']['expected']}, got {value!r}")
    if first["type"] in ("dataclass_type", "dataclass_exact_type", "dict_type"):
        return ConfigError(f"{key} must be a mapping, got {value!r}")
    return ConfigError(f"{key}: {first['msg']}, got {value!r}")


def _key(prefix: str, loc: tuple[Any, ...]) -> str:
    """``prefix.a[0].b`` for pydantic's location ``("a", 0, "b")``."""
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    return key


def _fields_at(cls: type, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the dataclass holding the key at ``loc`` (nested through lists)."""
    current: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int):
            current = typing.get_args(current)[0]  # list[X] -> X
        else:
            current = typing.get_type_hints(current, include_extras=False)[part]
    if not dataclasses.is_dataclass(current):
        return []
    return [f.name for f in dataclasses.fields(current)]


def params_schema() -> dict[str, Any]:
    """The JSON schema of a params file (``params.schema.json``): every section's keys and types.

    The keys, types and choices are the parser's own; the ranges and the relations between keys
    (``__post_init__``) are checked when a section is loaded.
    """
    properties, definitions = {}, {}
    for name, cls in SECTIONS.items():
        section = _adapter(cls).json_schema()
        definitions.update(section.pop("$defs", {}))
        properties[name] = section
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rankcal params.yaml",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "$defs": definitions,
    }


def env_overrides(section: dict[str, Any], name: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """``section`` with each key overridden by the variable ``RANKCAL_<NAME>_<KEY>``.

    For containers and Kubernetes, where mounting a params file is the hard way to change one
    setting. The value is read as YAML, like the file (``8``, ``true``, ``null``, ``[1, 2]``), then
    validated with the rest of the section; a variable naming no key is refused, so a typo never
    passes silently.

    Raises:
        ConfigError: On a variable of the prefix that names no key, or one that is no YAML.
    """
    prefix = f"RANKCAL_{name.upper()}_"
    out = dict(section)
    for var, text in environ.items():
        if not var.startswith(prefix):
            continue
        key = var[len(prefix) :].lower()
        if key not in section:
            raise ConfigError(
                f"{var} names no {name} key; known: {[prefix + k.upper() for k in section]}"
            )
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{var}={text!r} is no YAML value: {err}") from None
    return out


def _choice(key: str, value: Any, options: tuple[Any, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key} must be one of {list(options)}, got {value!r}")


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
