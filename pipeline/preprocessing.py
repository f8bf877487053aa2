"""Numpy-only image preprocessing shared by evaluation and serving so the two cannot drift."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114])
_CHUNK = 4096


def _require_nhwc(images: np.ndarray, what: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{what} expects a 4-D (N, H, W, C) array, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{what} expects uint8 images, got {images.dtype}")


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights for half-pixel-centred bilinear sampling along one axis."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    # Clamping before flooring reproduces torch's align_corners=False edge handling.
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a batch of images with half-pixel centres (torch ``align_corners=False``).

    Args:
        images: uint8 array (N, H, W, C).
        size: Target ``(height, width)``.

    Returns:
        uint8 array (N, height, width, C); ``images`` itself when the size already matches.
    """
    _require_nhwc(images, "resize_images")
    height, width = size
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if images.shape[1:3] == (height, width):
        return images
    y_lo, y_hi, wy = _axis_weights(images.shape[1], height)
    x_lo, x_hi, wx = _axis_weights(images.shape[2], width)
    wy = wy[None, :, None, None]
    wx = wx[None, None, :, None]
    out = np.empty((len(images), height, width, images.shape[3]), dtype=np.uint8)
    # Chunked so float intermediates stay small for whole datasets.
    for start in range(0, len(images), _CHUNK):
        batch = images[start : start + _CHUNK].astype(np.float32)
        rows = batch[:, y_lo] * (1 - wy) + batch[:, y_hi] * wy
        cols = rows[:, :, x_lo] * (1 - wx) + rows[:, :, x_hi] * wx
        out[start : start + _CHUNK] = np.clip(np.rint(cols), 0, 255)
    return out


def match_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Convert NHWC images to ``channels`` channels.

    Grey to RGB repeats the channel; RGB to grey uses ITU-R 601 luma (0.299, 0.587, 0.114).

    Args:
        images: uint8 array (N, H, W, C) with C of 1 or 3.
        channels: Target channel count, 1 or 3.

    Returns:
        uint8 array (N, H, W, channels); ``images`` itself when C already equals ``channels``.
    """
    _require_nhwc(images, "match_channels")
    have = images.shape[3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=3)
    if have == 3 and channels == 1:
        luma = images.astype(np.float32) @ _LUMA.astype(np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {have} channel(s) to {channels}; only 1 <-> 3 is supported")


def to_model_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Turn uint8 NHWC images into normalised float32 NCHW model input.

    Args:
        images: uint8 array (N, H, W, C).
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel standard deviation on the [0, 1] scale; all positive.

    Returns:
        float32 array (N, C, H, W) holding ``(images / 255 - mean) / std``.
    """
    _require_nhwc(images, "to_model_input")
    channels = images.shape[3]
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    if mean_arr.shape != (channels,) or std_arr.shape != (channels,):
        raise ValueError(
            f"mean and std need {channels} values each, got {list(mean)} and {list(std)}"
        )
    if np.any(std_arr <= 0):
        raise ValueError(f"std must be positive, got {list(std)}")
    scaled = images.astype(np.float32) / np.float32(255.0)
    normalised = (scaled - mean_arr) / std_arr
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))


# The fixed input scalings pretrained weights expect, per RGB channel on the [0, 1] scale:
# torchvision's and most timm models' ImageNet statistics, and [-1, 1] (Inception, the TensorFlow
# EfficientNet-Lite originals). "dataset" is the training split's own (:func:`channel_stats`).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def input_scaling(
    normalize: str, images: np.ndarray, indices: np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """The mean and std a model's input is normalised with (:func:`to_model_input`).

    Args:
        normalize: ``dataset`` (the statistics of ``images[indices]``, :func:`channel_stats`) or
            a key of :data:`NORMALIZATIONS` (fixed values, what pretrained weights expect).
        images: uint8 array (N, H, W, C) with C of 1 or 3.
        indices: The training images, for ``dataset``.

    Returns:
        ``(mean, std)``, C floats each; for one channel the fixed values are averaged over RGB
        (a grey image is the mean of equal channels, and the first convolution's RGB weights
        are summed: timm's ``adapt_input_conv``).
    """
    _require_nhwc(images, "input_scaling")
    if normalize == "dataset":
        return channel_stats(images, indices)
    if normalize not in NORMALIZATIONS:
        choices = ", ".join(["dataset", *NORMALIZATIONS])
        raise ValueError(f"unknown normalisation {normalize!r}; choose one of {choices}")
    mean, std = NORMALIZATIONS[normalize]
    if images.shape[3] == 1:
        return [float(np.mean(mean))], [float(np.mean(std))]
    if images.shape[3] != 3:
        raise ValueError(f"fixed normalisation needs 1 or 3 channels, got {images.shape[3]}")
    return list(mean), list(std)


def channel_stats(
    images: np.ndarray, indices: np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation on the [0, 1] scale.

    Args:
        images: uint8 array (N, H, W, C) with N > 0; may be a memory-mapped file.
        indices: The images to describe (e.g. the training split); ``None`` for all. They are
            gathered a chunk at a time, so a mapped dataset is never read into memory whole.

    Returns:
        ``(mean, std)``, each a list of C floats.
    """
    _require_nhwc(images, "channel_stats")
    rows = np.arange(len(images)) if indices is None else np.asarray(indices)
    if len(rows) == 0 or images[:1].size == 0:
        raise ValueError(f"channel_stats needs at least one pixel, got shape {images.shape}")
    channels = images.shape[3]
    total = np.zeros(channels, dtype=np.float64)
    total_sq = np.zeros(channels, dtype=np.float64)
    # Chunked float64 accumulation: a whole CIFAR train set in float64 would need gigabytes.
    for start in range(0, len(rows), _CHUNK):
        picked = np.sort(rows[start : start + _CHUNK])  # in file order for a mapped array
        chunk = images[picked].reshape(-1, channels).astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    count = len(rows) * images[:1].size // channels
    mean = total / count
    var = np.maximum(total_sq / count - np.square(mean), 0.0)
    return [float(m) for m in mean], [float(s) for s in np.sqrt(var)]
