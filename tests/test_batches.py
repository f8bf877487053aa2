"""In-memory batching, augmentation, and agreement with the serving preprocessing."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.batches import Normalizer, iterate_batches, num_batches, random_crop_flip
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
    seen = torch.cat([y for _, y in iterate_batches(images, labels, 5, gen)])
    assert len(seen) == 10 and len(set(seen.tolist())) == 10  # 5 + 5, the lone 11th dropped
    assert num_batches(11, 5) == 2 and num_batches(12, 5) == 3
    ordered = torch.cat([y for _, y in iterate_batches(images, labels, 5)])
    assert ordered.tolist() == list(range(11))  # evaluation keeps everything, in order
