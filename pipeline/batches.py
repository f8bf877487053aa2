"""In-memory batching and augmentation of uint8 images as tensors.

A small dataset fits in memory as uint8, so batches are cut from one tensor instead of going
through a DataLoader: on a 2-core CPU the per-sample Python overhead of a DataLoader costs more
than the small CNN's forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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

    def __getitem__(self, idx: Tensor) -> Tensor:
        picked = self.rows[idx.cpu().numpy()]
        order = np.argsort(picked, kind="stable")  # ascending offsets: sequential reads
        batch = np.empty((len(picked), *self.images.shape[1:]), dtype=np.uint8)
        batch[order] = self.images[picked[order]]
        return torch.from_numpy(batch).to(self.device)


def random_crop_flip(images: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Zero-padded random crop (and optional horizontal flip) of a uint8 NHWC batch.

    Equivalent to torchvision's ``RandomCrop(size, padding=pad)`` and ``RandomHorizontalFlip``
    applied per sample, vectorised over the batch.
    """
    b, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)).to(images.device)
    cols = (dx[:, None] + torch.arange(w)).to(images.device)
    if flip:
        flipped = torch.rand(b, generator=generator) < 0.5
        cols = torch.where(flipped.to(images.device)[:, None], cols.flip(1), cols)
    batch_idx = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch_idx, rows[:, :, None], cols[:, None, :]]


def iterate_batches(
    images: Tensor | MappedImages,
    labels: Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` batches, shuffled when a generator is given.

    A final batch of one sample is dropped when shuffling: BatchNorm cannot train on it.
    """
    n = len(images)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if generator is not None and len(idx) < 2:
            break
        idx = idx.to(images.device)
        yield images[idx], labels[idx]


def num_batches(n: int, batch_size: int) -> int:
    """Number of training batches :func:`iterate_batches` yields for ``n`` samples."""
    full, rest = divmod(n, batch_size)
    return full + int(rest >= 2)


def as_tensors(
    images: np.ndarray, labels: np.ndarray, device: torch.device
) -> tuple[Tensor, Tensor]:
    """uint8 NHWC images and int labels as tensors on ``device``."""
    return (
        torch.from_numpy(np.ascontiguousarray(images)).to(device),
        torch.from_numpy(labels.astype(np.int64)).to(device),
    )
