"""Tests for the OOD sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.data import OOD_NAMES, load_ood

SHAPES = [(28, 28, 1), (32, 32, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_digits_at_id_shape(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    images = load_ood("digits", shape=shape, raw_dir=tmp_path, count=None, seed=0)
    assert images.shape == (1797, *shape) and images.dtype == np.uint8
    # load_digits' 0..16 intensities are stretched to the full byte range.
    assert images.max() == 255 and images.min() == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_noise_at_id_shape(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    images = load_ood("noise", shape=shape, raw_dir=tmp_path, count=None, seed=0)
    assert images.shape == (2000, *shape) and images.dtype == np.uint8
    gauss, uniform = images[:1000].astype(float), images[1000:].astype(float)
    assert gauss.mean() == pytest.approx(127.5, abs=1.0)
    assert uniform.mean() == pytest.approx(127.5, abs=1.0)
    assert gauss.std() < uniform.std()


def test_noise_is_seeded(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"shape": (8, 8, 1), "raw_dir": tmp_path, "count": 11}
    first = load_ood("noise", seed=4, **kwargs)
    assert len(first) == 11
    np.testing.assert_array_equal(first, load_ood("noise", seed=4, **kwargs))
    assert not np.array_equal(first, load_ood("noise", seed=5, **kwargs))


def test_count_takes_a_seeded_subset(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"shape": (28, 28, 1), "raw_dir": tmp_path, "count": 50}
    first = load_ood("digits", seed=1, **kwargs)
    assert first.shape == (50, 28, 28, 1)
    np.testing.assert_array_equal(first, load_ood("digits", seed=1, **kwargs))
    assert not np.array_equal(first, load_ood("digits", seed=2, **kwargs))


@pytest.mark.parametrize("name", ["mnist", "svhn", "cifar100"])
def test_downloaded_sets_use_test_split_at_id_shape(
    tmp_path: Path, fake_downloader: Any, name: str
) -> None:
    images = load_ood(
        name, shape=(28, 28, 1), raw_dir=tmp_path, count=None, seed=0, downloader=fake_downloader
    )
    assert images.shape == (fake_downloader.n_test, 28, 28, 1) and images.dtype == np.uint8
    assert fake_downloader.calls == [name]
    rgb = load_ood(
        name, shape=(32, 32, 3), raw_dir=tmp_path, count=5, seed=0, downloader=fake_downloader
    )
    assert rgb.shape == (5, 32, 32, 3)
    assert fake_downloader.calls == [name]


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_ood("places365", shape=(28, 28, 1), raw_dir=tmp_path, count=None, seed=0)
    assert all(name in str(info.value) for name in OOD_NAMES)


@pytest.mark.parametrize(("shape", "count"), [((28, 28, 2), None), ((28, 28, 1), 0)])
def test_bad_shape_or_count(tmp_path: Path, shape: tuple[int, int, int], count: int | None) -> None:
    with pytest.raises(ValueError, match="got"):
        load_ood("noise", shape=shape, raw_dir=tmp_path, count=count, seed=0)
