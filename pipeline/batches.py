"""In-memory batching and augmentation of uint8 images as tensors.

A small dataset fits in memory as uint8, so batches are cut from one tensor instead of going
through a DataLoader: on a 2-core CPU the per-sample Python overhead of a DataLoader costs more
than the small CNN's forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import Tensor


class Normalizer:
    """uint8 NHWC batch -> float32 NCHW normalised with the training split's statistics.

    Mirrors :func:`pipeline.preprocessing.to_model_input` (which serving uses) in torch, so the
    arithmetic runs on the training device; a test checks the two agree.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std


class MappedImages:
    """Training images left in a memory-mapped ``.npy`` file, gathered batch by batch.

    Indexing with a tensor of positions (as :func:`iterate_batches` does) reads just those rows,
    in file order, and returns them as a uint8 tensor on ``device``: a dataset larger than
    memory trains with only a batch in memory.

    Args:
        images: uint8 (N, H, W, C), typically ``np.load(path, mmap_mode="r")``.
        rows: The rows of ``images`` that make up this set (e.g. the training indices).
        device: Where batches go.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, device: torch.device) -> None:
        self.images = images
        self.rows = np.asarray(rows)
        self.device = device

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, H, W, C)`` of this set, as a tensor of it would have."""
        return (len(self.rows), *self.images.shape[1:])

    def __getitem__(self, idx: Tensor) -> Tensor:
        picked = self.rows[idx.cpu().numpy()]
        order = np.argsort(picked, kind="stable")  # ascending offsets: sequential reads
        batch = np.empty((len(picked), *self.images.shape[1:]), dtype=np.uint8)
        batch[order] = self.images[picked[order]]
        return torch.from_numpy(batch).to(self.device)


@dataclass(frozen=True)
class CropFlip:
    """One batch's random crop offsets (and flips), drawn once for the whole batch.

    Drawing them for the global batch and applying a rank's rows of them gives each image the
    same augmentation whether one process trains or several share the batch.
    """

    pad: int
    dy: Tensor
    dx: Tensor
    flipped: Tensor | None

    @classmethod
    def draw(cls, n: int, pad: int, flip: bool, generator: torch.Generator) -> CropFlip:
        """Offsets in ``[0, 2 * pad]`` for ``n`` images, and a coin per image when ``flip``."""
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        flipped = torch.rand(n, generator=generator) < 0.5 if flip else None
        return cls(pad, dy, dx, flipped)

    def rows(self, rows: slice) -> CropFlip:
        """The draws of the batch rows ``rows``."""
        flipped = None if self.flipped is None else self.flipped[rows]
        return CropFlip(self.pad, self.dy[rows], self.dx[rows], flipped)

    def apply(self, images: Tensor) -> Tensor:
        """Zero-pad a uint8 NHWC batch by ``pad`` and cut each image at its offsets."""
        _, h, w, _ = images.shape
        padded = F.pad(images, (0, 0, self.pad, self.pad, self.pad, self.pad))
        rows = (self.dy[:, None] + torch.arange(h)).to(images.device)
        cols = (self.dx[:, None] + torch.arange(w)).to(images.device)
        if self.flipped is not None:
            cols = torch.where(self.flipped.to(images.device)[:, None], cols.flip(1), cols)
        batch_idx = torch.arange(len(images), device=images.device)[:, None, None]
        return padded[batch_idx, rows[:, :, None], cols[:, None, :]]


@dataclass(frozen=True)
class PhotoDraws:
    """One batch's photo augmentation: a seed per image, drawn for the whole batch.

    Each image is augmented under its own seed, so a rank that holds some rows of the batch
    augments them exactly as one process holding all of them would.
    """

    transform: Callable[[Tensor], Tensor]
    seeds: Tensor

    @classmethod
    def draw(
        cls, n: int, transform: Callable[[Tensor], Tensor], generator: torch.Generator
    ) -> PhotoDraws:
        """A seed per image for ``n`` images."""
        return cls(transform, torch.randint(0, 2**62, (n,), generator=generator))

    def rows(self, rows: slice) -> PhotoDraws:
        """The draws of the batch rows ``rows``."""
        return PhotoDraws(self.transform, self.seeds[rows])

    def apply(self, images: Tensor) -> Tensor:
        """Augment a uint8 NHWC batch, image by image (the transforms draw per call)."""
        out = torch.empty_like(images)
        # torchvision's random transforms draw from torch's global generator: fork it, so the
        # seeds here leave dropout's and the other draws' sequence as it was.
        with torch.random.fork_rng(devices=[]):
            for i, image in enumerate(images):
                torch.manual_seed(int(self.seeds[i]))
                out[i] = self.transform(image.permute(2, 0, 1)).permute(1, 2, 0)
        return out


def photo_transform(size: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """The ``photo`` augmentation of one uint8 CHW image: torchvision's random resized crop (a
    quarter to all of the image, aspect 3:4 to 4:3, back to ``size``), horizontal flip, then
    TrivialAugmentWide (one random photometric or geometric operation at a random strength).

    References:
        Müller and Hutter, "TrivialAugment: Tuning-free Yet State-of-the-Art Data Augmentation",
        ICCV 2021 (arXiv 2103.10158).
    """
    from torchvision.transforms import v2  # lazy: importing torchvision costs seconds

    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.TrivialAugmentWide(),
        ]
    )


def random_crop_flip(images: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Zero-padded random crop (and optional horizontal flip) of a uint8 NHWC batch.

    Equivalent to torchvision's ``RandomCrop(size, padding=pad)`` and ``RandomHorizontalFlip``
    applied per sample, vectorised over the batch.
    """
    return CropFlip.draw(len(images), pad, flip, generator).apply(images)


def training_batches(
    images: Tensor | MappedImages,
    labels: Tensor,
    batch_size: int,
    generator: torch.Generator,
    *,
    crop: tuple[int, bool] | None = None,
    photo: Callable[[Tensor], Tensor] | None = None,
    shard: slice = slice(None),
    min_size: int = 2,
) -> Iterator[tuple[Tensor, Tensor, float]]:
    """Shuffled, augmented training batches, or one rank's rows of each.

    Every rank draws the same permutation and crops from the same seeded ``generator`` and
    keeps the rows ``shard`` of each global batch, so the ranks' rows together are exactly the
    batches one process would train on.

    Args:
        images: uint8 NHWC training images.
        labels: Their labels.
        batch_size: Rows of a global batch.
        generator: Seeded source of the order and the crops; identical on every rank.
        crop: ``(pad, flip)`` of the random crop, or None for no augmentation.
        photo: A per-image transform of uint8 CHW images (:func:`photo_transform`), seeded per
            image from ``generator``; instead of ``crop``.
        shard: Which rows of each global batch to yield.
        min_size: A final global batch smaller than this is dropped (BatchNorm and mixing
            need at least two images, per rank when several share the batch).

    Yields:
        ``(images, labels, share)``: the rows, and their share of the global batch's rows.
    """
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(images), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < min_size:
            break
        draws: CropFlip | PhotoDraws | None = None
        if crop:
            draws = CropFlip.draw(len(idx), crop[0], crop[1], generator)
        elif photo is not None:
            draws = PhotoDraws.draw(len(idx), photo, generator)
        mine = idx[shard].to(images.device)
        batch = images[mine]
        if draws is not None:
            batch = draws.rows(shard).apply(batch)
        yield batch, labels[mine], len(mine) / len(idx)


def num_batches(n: int, batch_size: int, min_size: int = 2) -> int:
    """Number of batches :func:`training_batches` yields for ``n`` samples."""
    full, rest = divmod(n, batch_size)
    return full + int(rest >= min_size)


def as_tensors(
    images: np.ndarray, labels: np.ndarray, device: torch.device
) -> tuple[Tensor, Tensor]:
    """uint8 NHWC images and int labels as tensors on ``device``."""
    return (
        torch.from_numpy(np.ascontiguousarray(images)).to(device),
        torch.from_numpy(labels.astype(np.int64)).to(device),
    )
