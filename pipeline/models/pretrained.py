"""Where pretrained backbone weights come from, and the error that says so when fetching fails.

torchvision keeps weight files in ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub``),
named as the last part of their URL; timm fetches from the Hugging Face Hub into its cache
(``$HF_HOME/hub``, one ``models--<org>--<name>`` folder per repository), or, for the few models
without a Hub copy, from a URL into the same folder as torchvision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

SCRATCH_HINT = "or set model.pretrained: false to train from scratch"


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be fetched; the message names the file and where it goes."""


def _reason(err: Exception) -> str:
    return str(err).rstrip(". ")  # the message goes on after it with its own full stop


def torch_hub_file(url: str) -> Path:
    """The path ``torch.hub.load_state_dict_from_url`` reads ``url`` from and downloads it to."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def tv_weights_error(arch: str, weights: Any, err: Exception) -> PretrainedWeightsError:
    """The error for torchvision ``weights`` (a ``WeightsEnum`` member) that failed to download.

    Args:
        arch: The ``model.arch`` value.
        weights: The weights enum member, e.g. ``ResNet18_Weights.IMAGENET1K_V1``.
        err: The download error.

    Returns:
        The error to raise.
    """
    target = torch_hub_file(weights.url)
    return PretrainedWeightsError(
        f"could not download the pretrained weights of model.arch {arch!r} (torchvision "
        f"{weights}) from {weights.url}: {_reason(err)}. Download that file elsewhere and put "
        f"it at {target} ($TORCH_HOME/hub/checkpoints/{target.name}), {SCRATCH_HINT}"
    )


def timm_weights_source(name: str, arch: str) -> dict[str, str]:
    """Where timm fetches ``name``'s pretrained weights: a Hub repository or a URL.

    Args:
        name: The timm model name, optionally with a tag.
        arch: The ``model.arch`` value, for the message.

    Returns:
        ``{"hf_hub_id": ...}`` or ``{"url": ...}``.

    Raises:
        ValueError: If timm has no pretrained weights for ``name``.
    """
    from timm.models import get_pretrained_cfg  # lazy: timm is only needed for backbones

    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:
        return {"hf_hub_id": cfg.hf_hub_id}
    if cfg is not None and cfg.url:
        return {"url": cfg.url}
    raise ValueError(f"model.arch {arch!r}: timm has no pretrained weights for it; {SCRATCH_HINT}")


def timm_weights_error(arch: str, source: dict[str, str], err: Exception) -> PretrainedWeightsError:
    """The error for timm weights from ``source`` (see :func:`timm_weights_source`) that failed.

    Args:
        arch: The ``model.arch`` value.
        source: Where the weights come from.
        err: The download error.

    Returns:
        The error to raise.
    """
    if "url" in source:
        target = torch_hub_file(source["url"])
        return PretrainedWeightsError(
            f"could not download the pretrained weights of model.arch {arch!r} from "
            f"{source['url']}: {_reason(err)}. Download that file elsewhere and put it at {target} "
            f"($TORCH_HOME/hub/checkpoints/{target.name}), {SCRATCH_HINT}"
        )
    from huggingface_hub import constants  # a timm dependency

    repo = source["hf_hub_id"].split("@")[0]  # timm writes a revision as repo@revision
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    return PretrainedWeightsError(
        f"could not fetch the pretrained weights of model.arch {arch!r} from the Hugging Face "
        f"Hub repository {repo} (https://huggingface.co/{repo}): {_reason(err)}. On a machine with "
        f"network access run `hf download {repo}` and copy its cache folder "
        f"(models--{repo.replace('/', '--')}, with its refs/ and snapshots/) to {folder} "
        f"($HF_HOME/hub), {SCRATCH_HINT}"
    )
