"""In-memory batching, augmentation, and agreement with the serving preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.batches import (
    MappedImages,
    Normalizer,
    PhotoDraws,
    num_batches,
    photo_transform,
    random_crop_flip,
    training_batches,
)
from pipeline.preprocessing import to_model_input


def test_normalizer_matches_shared_preprocessing() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 7, 6, 3), dtype=np.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    ours = Normalizer(mean, std, torch.device("cpu"))(torch.from_numpy(images))
    np.testing.assert_allclose(ours.numpy(), to_model_input(images, mean, std), rtol=1e-6)


def test_crop_without_padding_is_identity_and_flip_mirrors() -> None:
    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).view(2, 3, 4, 1)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(images, pad=0, flip=False, generator=gen), images)
    flipped = [
        random_crop_flip(images, 0, True, torch.Generator().manual_seed(s)) for s in range(8)
    ]
    for out in flipped:
        for i in range(2):
            assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(1))
    assert any(not torch.equal(out, images) for out in flipped)


def test_padded_crop_is_a_shifted_window_with_zero_fill() -> None:
    images = torch.full((64, 5, 5, 1), 7, dtype=torch.uint8)
    out = random_crop_flip(images, pad=2, flip=False, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    assert set(out.unique().tolist()) == {0, 7}  # some windows reach into the zero padding
    assert (out == 7).sum(dim=(1, 2, 3)).min() >= 9  # a 5x5 window shifted <= 2 keeps 3x3


def test_batches_cover_every_sample_once_and_drop_a_single_leftover() -> None:
    images = torch.arange(11, dtype=torch.uint8).view(11, 1, 1, 1)
    labels = torch.arange(11)
    gen = torch.Generator().manual_seed(0)
    batches = list(training_batches(images, labels, 5, gen))
    seen = torch.cat([y for _, y, _ in batches])
    assert len(seen) == 10 and len(set(seen.tolist())) == 10  # 5 + 5, the lone 11th dropped
    assert [share for _, _, share in batches] == [1.0, 1.0]
    assert num_batches(11, 5) == 2 and num_batches(12, 5) == 3
    assert num_batches(13, 5, min_size=4) == 2 and num_batches(14, 5, min_size=4) == 3


def _rows(world: int, crop: tuple[int, bool] | None) -> list[list[tuple[Tensor, Tensor, float]]]:
    images = torch.randint(0, 256, (23, 6, 6, 1), generator=torch.Generator().manual_seed(3))
    images = images.to(torch.uint8)
    labels = torch.arange(23)
    return [
        list(
            training_batches(
                images,
                labels,
                8,
                torch.Generator().manual_seed(5),
                crop=crop,
                shard=slice(rank, None, world),
                min_size=2 * world,
            )
        )
        for rank in range(world)
    ]


def test_ranks_split_each_global_batch_and_get_the_same_crops_as_one_process() -> None:
    """Two ranks' rows of each batch, interleaved, are one process's batch: same images, same
    labels, same crop and flip per image; the 7-image tail (23 = 8 + 8 + 7) splits 4 + 3."""
    (alone,) = _rows(1, (2, True))
    first, second = _rows(2, (2, True))
    assert len(alone) == len(first) == len(second) == 3
    for (x, y, _), (x0, y0, s0), (x1, y1, s1) in zip(alone, first, second, strict=True):
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert s0 + s1 == 1.0
    assert (alone[2][2], first[2][2], second[2][2]) == (1.0, 4 / 7, 3 / 7)


def test_a_tail_too_small_for_every_rank_is_dropped() -> None:
    """With 4 ranks a batch needs 8 images (two per rank); 23 = 8 + 8 + 7 keeps two batches."""
    assert all(len(rank) == 2 for rank in _rows(4, None))
    assert num_batches(23, 8, min_size=8) == 2


def test_a_rank_reads_only_its_rows_of_a_memory_mapped_split(tmp_path: Path) -> None:
    """Sharding a split left on disk: each rank's batches are the in-memory rank's."""
    array = np.random.default_rng(0).integers(0, 256, (23, 6, 6, 1), dtype=np.uint8)
    np.save(tmp_path / "images.npy", array)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    rows = np.arange(3, 23)  # the training indices: not the file's first rows
    on_disk = MappedImages(mapped, rows, torch.device("cpu"))
    in_memory = torch.from_numpy(array[rows])
    labels = torch.arange(20)
    for rank in (0, 1):
        kwargs = {"crop": (2, True), "shard": slice(rank, None, 2), "min_size": 4}
        disk = training_batches(on_disk, labels, 8, torch.Generator().manual_seed(1), **kwargs)
        memory = training_batches(in_memory, labels, 8, torch.Generator().manual_seed(1), **kwargs)
        for (x_disk, y_disk, _), (x_mem, y_mem, _) in zip(disk, memory, strict=True):
            assert torch.equal(x_disk, x_mem) and torch.equal(y_disk, y_mem)


def test_photo_augmentation_is_per_image_seeded_and_the_same_split_across_ranks() -> None:
    images = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, size=(6, 24, 20, 3), dtype=np.uint8)
    )
    transform = photo_transform((24, 20))
    draws = PhotoDraws.draw(6, transform, torch.Generator().manual_seed(5))
    torch.manual_seed(11)
    before = torch.rand(1)
    torch.manual_seed(11)
    whole = draws.apply(images)
    assert torch.equal(torch.rand(1), before)  # the global generator's sequence is untouched
    assert whole.shape == images.shape and whole.dtype == torch.uint8
    assert not torch.equal(whole, images)
    # two ranks holding three rows each augment them as one process holding all six
    halves = [draws.rows(s).apply(images[s]) for s in (slice(0, 3), slice(3, 6))]
    assert torch.equal(torch.cat(halves), whole)
    again = PhotoDraws.draw(6, transform, torch.Generator().manual_seed(5)).apply(images)
    assert torch.equal(again, whole)
    other = PhotoDraws.draw(6, transform, torch.Generator().manual_seed(6)).apply(images)
    assert not torch.equal(other, whole)


def test_photo_batches_augment_each_epoch_differently_and_keep_labels() -> None:
    images = torch.from_numpy(
        np.random.default_rng(1).integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    )
    labels = torch.arange(8)
    transform = photo_transform((16, 16))
    first = list(
        training_batches(images, labels, 4, torch.Generator().manual_seed(0), photo=transform)
    )
    second = list(
        training_batches(images, labels, 4, torch.Generator().manual_seed(1), photo=transform)
    )
    assert [len(b) for b, _, _ in first] == [4, 4]
    assert sorted(torch.cat([y for _, y, _ in first]).tolist()) == list(range(8))
    assert not torch.equal(
        torch.cat([b for b, _, _ in first]), torch.cat([b for b, _, _ in second])
    )
