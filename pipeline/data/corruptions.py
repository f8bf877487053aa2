"""Deterministic, seeded corruptions of uint8 NHWC image batches, at severities 1 to 5.

For measuring calibration under distribution shift in the spirit of CIFAR-10-C. Every
corruption works on any ``(n, H, W, C)`` batch (28×28×1 Fashion-MNIST, 32×32×3 CIFAR-10),
computes on the [0, 1] scale in float32 and returns uint8 (clipped, rounded half to even).
The only randomness is the ``numpy.random.Generator`` passed in; :func:`corrupt` derives it
from ``(seed, corruption, severity)``.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# Parameters per severity 1..5: the default table, CIFAR-10-C's and ImageNet-C's values (kept
# for CIFAR and every dataset without a table of its own). Units:
#   gaussian_noise: std of additive noise on the [0, 1] pixel scale (ImageNet-C's values;
#                   CIFAR-10-C's 0.04..0.10 barely moves Fashion-MNIST accuracy);
#   gaussian_blur:  sigma in pixels along H and W (CIFAR-10-C uses 0.4..1 at 32 px);
#   contrast:       factor c in (x - mean) * c + mean, per image and channel (ImageNet-C's);
#   rotation:       angle magnitude in degrees, sign drawn per image;
#   brightness:     offset added on the [0, 1] scale (ImageNet-C's; CIFAR-10-C adds to HSV V);
#   pixelate:       nominal block side f in pixels: box-average down to round(H / f) pixels,
#                   then nearest upsampling (28 px → 14, 9, 7, 6, 5; 32 px → 16, 11, 8, 6, 5);
#   impulse_noise:  fraction of pixel values replaced, half by 0 and half by 255 (ImageNet-C's);
#   occlusion:      side of the zeroed square as a fraction of H, rounded to whole pixels
#                   (28 px → 3, 6, 8, 11, 14; 32 px → 3, 6, 10, 13, 16);
#   invert:         weight a of the negative.
SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "gaussian_blur": (0.5, 0.75, 1.0, 1.25, 1.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "rotation": (5.0, 10.0, 15.0, 20.0, 30.0),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "pixelate": (2.0, 3.0, 4.0, 5.0, 6.0),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "occlusion": (0.1, 0.2, 0.3, 0.4, 0.5),
    "invert": (0.2, 0.4, 0.6, 0.8, 1.0),
}
# Each parameter's range, from no change (or nearly) to the strongest setting searched: what
# bench/fit_severities.py searches in, and the direction in which a corruption gets stronger.
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "gaussian_noise": (0.0, 1.0),
    "gaussian_blur": (0.0, 6.0),
    "contrast": (1.0, 0.0),  # c = 1 leaves the image as it is
    "rotation": (0.0, 180.0),
    "brightness": (0.0, 1.0),
    "pixelate": (1.0, 28.0),
    "impulse_noise": (0.0, 1.0),
    "occlusion": (0.0, 1.0),
    "invert": (0.0, 0.5),  # a = 0.5 is uniform grey; beyond it the negative shows again
}
# Fashion-MNIST's own table. On its black backgrounds the default table's contrast,
# brightness and invert at severity 1 already left a CE model 19%, 47% and 23% accuracy (the
# shift averages were those corruptions' story). Fitted by `python bench/fit_severities.py`
# (2026-11-30) on the study's three CE models so that severities 1..5 cost them, on average,
# 5, 12, 22, 35 and 50 accuracy points on 3,000 test images outside the shift evaluation's
# subset; what each model lost is in docs/benchmarks.md.
FASHION_MNIST_SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.0859, 0.127, 0.162, 0.206, 0.271),
    "gaussian_blur": (0.706, 0.903, 1.11, 1.4, 1.87),
    "contrast": (0.82, 0.737, 0.649, 0.564, 0.447),
    "rotation": (7.03, 11.8, 16.6, 23.0, 31.1),
    "brightness": (0.0454, 0.0724, 0.112, 0.202, 0.363),
    "pixelate": (1.92, 2.24, 3.3, 4.3, 5.1),  # 28 px → 15, 12, 8, 7, 5
    "impulse_noise": (0.0229, 0.0435, 0.0673, 0.106, 0.17),
    "occlusion": (0.232, 0.34, 0.446, 0.518, 0.625),  # 28 px → 6, 10, 12, 15, 18
    "invert": (0.0449, 0.0649, 0.0959, 0.135, 0.202),
}
SEVERITY_TABLES: dict[str, dict[str, tuple[float, ...]]] = {
    "fashion_mnist": FASHION_MNIST_SEVERITY_PARAMS,
}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def gaussian_noise(images: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian noise of standard deviation ``std`` (on [0, 1]) to every value.

    References:
        Hendrycks & Dietterich, ICLR 2019, App. A ("Gaussian Noise").
    """
    x = _to_unit(images)
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(std)
    return _to_uint8(x)


def gaussian_blur(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Blur every image with ``sigma`` pixels over H and W only (not across images or
    channels); edges replicated.

    Deterministic: ``rng`` is unused.

    References:
        Hendrycks & Dietterich, ICLR 2019 (the "Gaussian Blur" extra corruption).
    """
    x = ndimage.gaussian_filter(_to_unit(images), sigma=(0.0, sigma, sigma, 0.0), mode="nearest")
    return _to_uint8(x)


def contrast(images: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """Blend every image toward its own per-channel mean: ``(x − μ) · c + μ``.

    Deterministic: ``rng`` is unused.

    References:
        Hendrycks & Dietterich, ICLR 2019, App. A ("Contrast").
    """
    x = _to_unit(images)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((x - mean) * np.float32(c) + mean)


def rotation(images: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate every image about its centre by ±``angle`` degrees (sign per image), bilinear,
    zero fill.

    References:
        Hendrycks & Dietterich, ICLR 2019 (rotation is among their "extra" perturbations).
    """
    signs = rng.choice(np.array([-1.0, 1.0]), size=len(images))
    x = _to_unit(images)
    out = np.empty_like(x)
    for i, sign in enumerate(signs):
        out[i] = ndimage.rotate(
            x[i], sign * angle, axes=(1, 0), reshape=False, order=1, mode="constant", cval=0.0
        )
    return _to_uint8(out)


def brightness(images: np.ndarray, offset: float, rng: np.random.Generator) -> np.ndarray:
    """Add ``offset`` to every pixel value on the [0, 1] scale, clipped at white.

    Deterministic: ``rng`` is unused.

    References:
        Hendrycks & Dietterich, ICLR 2019, App. A ("Brightness"; they add to HSV value).
    """
    return _to_uint8(_to_unit(images) + np.float32(offset))


def pixelate(images: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample to ``round(H / f) × round(W / f)``, then upsample by nearest neighbour.

    Pixel ``i`` of an axis of size ``S`` falls in block ``floor(i · s / S)`` of ``s`` blocks, so
    block sides differ by at most one pixel and no thin remainder block is left at the edge.
    Deterministic: ``rng`` is unused.

    References:
        Hendrycks & Dietterich, ICLR 2019, App. A ("Pixelate").
    """
    x = _to_unit(images)
    blocks = []
    for axis in (1, 2):
        size = x.shape[axis]
        block = np.arange(size) * max(round(size / f), 1) // size
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        starts = np.flatnonzero(np.diff(block, prepend=-1))
        counts = np.bincount(block).astype(np.float32).reshape(shape)
        x = np.add.reduceat(x, starts, axis=axis) / counts
        blocks.append(block)
    return _to_uint8(x[:, blocks[0]][:, :, blocks[1]])


def impulse_noise(images: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper: each pixel value independently becomes 0 or 255, each w.p. ``amount/2``.

    References:
        Hendrycks & Dietterich, ICLR 2019, App. A ("Impulse Noise").
    """
    u = rng.random(images.shape, dtype=np.float32)
    out = images.copy()
    out[u < amount / 2] = 0
    out[(u >= amount / 2) & (u < amount)] = 255
    return out


def occlusion(images: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Zero one square of side ``round(s · H)`` per image, placed uniformly fully inside it.

    Every image loses exactly ``side²`` pixels (all channels), cutout-like.

    References:
        DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with
        Cutout", arXiv 1708.04552, 2017.
    """
    n, h, w, _ = images.shape
    side = min(round(s * h), h, w)
    top = rng.integers(0, h - side + 1, size=n)[:, None, None]
    left = rng.integers(0, w - side + 1, size=n)[:, None, None]
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    out = images.copy()
    out[inside] = 0
    return out


def invert(images: np.ndarray, a: float, rng: np.random.Generator) -> np.ndarray:
    """Blend each image with its negative, ``(1 - a) x + a (255 - x)``.

    a = 1 (the default table's severity 5) is the full negative: a light background where
    training had a dark one, as photos of objects on white paper give. Not one of Hendrycks &
    Dietterich's corruptions: the shift the monitoring must catch (the estimate of accuracy
    fails there while confidence stays high). Deterministic (``rng`` unused).
    """
    a32 = np.float32(a)
    x = _to_unit(images)
    return _to_uint8((1 - a32) * x + a32 * (1 - x))


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "rotation": rotation,
    "brightness": brightness,
    "pixelate": pixelate,
    "impulse_noise": impulse_noise,
    "occlusion": occlusion,
    "invert": invert,
}


def severity_table(dataset: str) -> dict[str, tuple[float, ...]]:
    """The severity parameters for ``dataset``: its own table, or the default (CIFAR-C's)."""
    return SEVERITY_TABLES.get(dataset, SEVERITY_PARAMS)


def corrupt(
    images: np.ndarray,
    name: str,
    severity: int,
    seed: int,
    table: dict[str, tuple[float, ...]] | None = None,
) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` with randomness fixed by ``seed``.

    The generator is ``np.random.default_rng([seed, index of name in CORRUPTIONS, severity])``,
    so every (seed, corruption, severity) triple is reproducible and independent of the others.

    Args:
        images: Batch (n, H, W, C), uint8.
        name: A key of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (strong).
        seed: Non-negative integer.
        table: Parameters per corruption and severity (:func:`severity_table`); None: the
            default, :data:`SEVERITY_PARAMS`.

    Returns:
        A new uint8 array of the same shape; the input is not modified.

    References:
        Hendrycks & Dietterich, ICLR 2019.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a uint8 array, got {getattr(images, 'dtype', type(images))}"
        )
    if images.ndim != 4 or images.shape[0] == 0 or min(images.shape[1:]) == 0:
        raise ValueError(f"images must be a non-empty (n, H, W, C) batch, got shape {images.shape}")
    rng = np.random.default_rng([int(seed), list(CORRUPTIONS).index(name), int(severity)])
    params = SEVERITY_PARAMS if table is None else table
    return CORRUPTIONS[name](images, params[name][int(severity) - 1], rng)


def _to_unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / np.float32(255.0)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * np.float32(255.0)), 0, 255).astype(np.uint8)
