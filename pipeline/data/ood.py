"""Out-of-distribution image sets, returned at the in-distribution image shape."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.data.download import Downloader, fetch_dataset
from pipeline.data.readers import load_id_dataset
from pipeline.preprocessing import match_channels, resize_images

logger = logging.getLogger(__name__)

OOD_NAMES: tuple[str, ...] = ("digits", "noise", "mnist", "svhn", "cifar100")
_DEFAULT_NOISE_COUNT = 2000
_NOISE_MEAN = 127.5
_NOISE_STD = 64.0


def _digits() -> np.ndarray:
    # Imported lazily: sklearn is only needed for this one set.
    from sklearn.datasets import load_digits

    # load_digits stores 4-bit intensities (0..16).
    scaled = np.rint(load_digits().images * (255.0 / 16.0))
    return np.clip(scaled, 0, 255).astype(np.uint8)[..., None]


def _noise(shape: tuple[int, int, int], count: int, rng: np.random.Generator) -> np.ndarray:
    n_gauss = count // 2
    gauss = rng.normal(_NOISE_MEAN, _NOISE_STD, size=(n_gauss, *shape))
    gauss = np.clip(np.rint(gauss), 0, 255).astype(np.uint8)
    uniform = rng.integers(0, 256, size=(count - n_gauss, *shape), dtype=np.uint8)
    return np.concatenate([gauss, uniform])


def _check_shape(shape: tuple[int, int, int]) -> None:
    if len(shape) != 3 or shape[0] <= 0 or shape[1] <= 0 or shape[2] not in (1, 3):
        raise ValueError(f"shape must be (H, W, C) with C in (1, 3), got {shape}")


def load_ood(
    name: str,
    *,
    shape: tuple[int, int, int],
    raw_dir: Path,
    count: int | None,
    seed: int,
    downloader: Downloader | None = None,
) -> np.ndarray:
    """Load OOD set ``name`` resized and channel-matched to ``shape``.

    Args:
        name: One of :data:`OOD_NAMES`.
        shape: ID image shape ``(H, W, C)``.
        raw_dir: Raw-data root for the sets that are downloaded (mnist, svhn, cifar100).
        count: Number of images; a seeded random subset when the set is larger. ``None`` keeps
            the whole set (2000 images for ``noise``).
        seed: Seed for the noise and the subset.
        downloader: Passed to :func:`pipeline.data.download.fetch_dataset`.

    Returns:
        uint8 array (N, H, W, C).

    Raises:
        ValueError: If ``name`` is unknown or ``shape``/``count`` is invalid.
    """
    if name not in OOD_NAMES:
        raise ValueError(f"unknown OOD set {name!r}; expected one of {list(OOD_NAMES)}")
    _check_shape(shape)
    if count is not None and count <= 0:
        raise ValueError(f"count must be positive or None, got {count}")
    rng = np.random.default_rng(seed)
    if name == "noise":
        return _noise(shape, _DEFAULT_NOISE_COUNT if count is None else count, rng)
    if name == "digits":
        images = _digits()
    else:
        folder = fetch_dataset(name, Path(raw_dir), downloader=downloader)
        images = load_id_dataset(name, folder)[1].images
    if count is not None and count < len(images):
        # Subsetting before resizing keeps the resize cheap.
        images = images[np.sort(rng.choice(len(images), size=count, replace=False))]
    logger.debug("OOD %s: %d images %s -> %s", name, len(images), images.shape[1:], shape)
    return match_channels(resize_images(images, shape[:2]), shape[2])
