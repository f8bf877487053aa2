"""Input statistics the service bins for input drift (pipeline/input_stats.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.drift import bin_counts
from pipeline.input_stats import (
    EDGES,
    STATISTICS,
    atypical,
    input_statistics,
    reference_histograms,
)


def test_statistics_by_hand() -> None:
    # one 2x2 grey image: 0, 0, 255, 51 -> values 0, 0, 1, 0.2
    image = np.array([[[0], [0]], [[255], [51]]], dtype=np.uint8)[None]
    stats = input_statistics(image)
    assert stats["mean"][0] == pytest.approx(0.3)
    # population std of [0, 0, 1, 0.2]: sqrt(mean of squares 0.26 - 0.09) = sqrt(0.17)
    assert stats["contrast"][0] == pytest.approx(2 * np.sqrt(0.17), rel=1e-6)
    # dark: values <= 64 (0, 0, 51); bright: >= 191 (255)
    assert stats["dark_share"][0] == 0.75 and stats["bright_share"][0] == 0.25


def test_colour_images_count_every_channel_value() -> None:
    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[0, 0, 0] = [255, 255, 255]
    stats = input_statistics(image)
    assert stats["bright_share"][0] == 0.25 and stats["dark_share"][0] == 0.75
    assert stats["mean"][0] == pytest.approx(0.25)


def test_extremes_stay_in_the_unit_interval() -> None:
    half = np.zeros((1, 2, 2, 1), np.uint8)
    half[0, 0] = 255  # two of four pixels white: std 0.5, the largest
    stats = input_statistics(np.concatenate([half, np.full((1, 2, 2, 1), 255, np.uint8)]))
    assert stats["contrast"].tolist() == [1.0, 0.0]
    assert all(v.min() >= 0 and v.max() <= 1 for v in stats.values())


def test_refuses_anything_but_uint8_batches() -> None:
    with pytest.raises(ValueError, match="uint8"):
        input_statistics(np.zeros((2, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        input_statistics(np.zeros((4, 4, 1), np.uint8))


def test_reference_histograms_equal_direct_binning_batch_by_batch() -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 6, 6, 1), dtype=np.uint8)
    images[:20] //= 4  # darker ones
    direct = input_statistics(images)
    counts = reference_histograms(images, batch_size=7)
    assert set(counts) == set(STATISTICS)
    for name in STATISTICS:
        assert counts[name] == bin_counts(direct[name], EDGES).tolist()
        assert sum(counts[name]) == 50
    inverted = reference_histograms(images, batch_size=7, invert=True)
    assert inverted["mean"] == bin_counts(1 - direct["mean"], EDGES).tolist()
    assert inverted["dark_share"] == bin_counts(direct["bright_share"], EDGES).tolist()


def test_atypical_flags_images_in_bins_training_images_never_reached() -> None:
    edges = [0.0, 0.5, 1.0]
    # training: every image dark on average (mean bin 1 empty), contrast anywhere
    reference = {
        "mean": [1000, 0],
        "contrast": [500, 500],
        "dark_share": [999, 1],  # 0.1%: rare enough only below min_fraction 0.002
        "bright_share": [1000, 0],
    }
    dark = np.zeros((1, 2, 2, 1), np.uint8)
    dark[0, 0, 0] = 100  # mean 0.1, dark share 1: in the bin 1 of 1000 training images had
    bright = np.full((1, 2, 2, 1), 255, np.uint8)  # mean 1, bright share 1: never in training
    stats = input_statistics(np.concatenate([dark, bright]))
    assert atypical(stats, edges, reference).tolist() == [False, True]
    assert atypical(stats, edges, reference, min_fraction=0.002).tolist() == [True, True]
    empty = input_statistics(np.zeros((0, 2, 2, 1), np.uint8))
    assert atypical(empty, edges, reference).shape == (0,)
