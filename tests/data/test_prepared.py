"""Tests for preparing, saving and loading the download stage's product."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.data import (
    DataError,
    PreparedData,
    load_prepared,
    prepare_data,
    save_prepared,
)
from pipeline.preprocessing import channel_stats
from tests.conftest import data_config


@pytest.fixture
def prepared(tmp_path: Path, fake_downloader: Any, params: dict[str, Any]) -> PreparedData:
    fake_downloader.n_train, fake_downloader.n_test = 100, 30
    cfg = data_config(
        params, dataset="cifar10", val_fraction=0.2, seed=0, ood=["digits", "noise"], max_test=20
    )
    return prepare_data(cfg, tmp_path / "raw", max_train=50, downloader=fake_downloader)


def test_prepare_data_caps_splits_and_describes(prepared: PreparedData) -> None:
    assert prepared.dataset == "cifar10" and prepared.num_classes == 10
    assert prepared.image_shape == (32, 32, 3)
    assert len(prepared.train) == 50 and len(prepared.test) == 20
    assert len(prepared.train_idx) == 40 and len(prepared.val_idx) == 10
    assert np.bincount(prepared.train.labels[prepared.val_idx]).tolist() == [1] * 10
    mean, std = channel_stats(prepared.train.images[prepared.train_idx])
    assert prepared.mean == mean and prepared.std == std
    for images in prepared.ood.values():
        assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8


def test_ood_count_overrides_test_size(
    tmp_path: Path, fake_downloader: Any, params: dict[str, Any]
) -> None:
    cfg = data_config(params, dataset="mnist", val_fraction=0.5, ood=["noise"], max_test=None)
    data = prepare_data(cfg, tmp_path, max_train=None, downloader=fake_downloader, ood_count=7)
    assert data.image_shape == (28, 28, 1) and data.ood["noise"].shape == (7, 28, 28, 1)


def test_unknown_ood_name_fails_before_fetching(
    tmp_path: Path, fake_downloader: Any, params: dict[str, Any]
) -> None:
    cfg = data_config(params, dataset="cifar10")
    object.__setattr__(cfg, "ood", ["bogus"])  # past the config's own check
    with pytest.raises(ValueError, match="bogus"):
        prepare_data(cfg, tmp_path, max_train=None, downloader=fake_downloader)
    assert fake_downloader.calls == []


def test_save_load_round_trip(tmp_path: Path, prepared: PreparedData) -> None:
    out = tmp_path / "prepared"
    save_prepared(prepared, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.npz",
        "meta.json",
        "ood.npz",
        "split.npz",
        "x_test.npy",
        "x_train.npy",
    ]
    loaded = load_prepared(out)
    assert loaded.class_names == prepared.class_names and loaded.resize == prepared.resize
    assert (loaded.dataset, loaded.num_classes) == (prepared.dataset, prepared.num_classes)
    assert (loaded.mean, loaded.std) == (prepared.mean, prepared.std)
    assert list(loaded.ood) == list(prepared.ood)
    for got, want in [
        (loaded.train.images, prepared.train.images),
        (loaded.train.labels, prepared.train.labels),
        (loaded.test.images, prepared.test.images),
        (loaded.test.labels, prepared.test.labels),
        (loaded.train_idx, prepared.train_idx),
        (loaded.val_idx, prepared.val_idx),
        *[(loaded.ood[k], prepared.ood[k]) for k in prepared.ood],
    ]:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    with (out / "meta.json").open() as fh:
        meta = json.load(fh)
    assert meta["image_shape"] == [32, 32, 3] and meta["ood_names"] == ["digits", "noise"]
    assert meta["sizes"]["train"] == 40 and meta["sizes"]["ood"] == {"digits": 20, "noise": 20}


@pytest.mark.parametrize(
    "victim", ["x_train.npy", "x_test.npy", "labels.npz", "split.npz", "ood.npz", "meta.json"]
)
def test_missing_file_is_named(tmp_path: Path, prepared: PreparedData, victim: str) -> None:
    save_prepared(prepared, tmp_path)
    (tmp_path / victim).unlink()
    with pytest.raises(DataError, match=re.escape(victim)):
        load_prepared(tmp_path)


def test_mapped_images_equal_read_ones(tmp_path: Path, prepared: PreparedData) -> None:
    save_prepared(prepared, tmp_path)
    mapped = load_prepared(tmp_path, mmap=True)
    assert isinstance(mapped.train.images, np.memmap)
    np.testing.assert_array_equal(mapped.train.images, prepared.train.images)
    np.testing.assert_array_equal(mapped.test.images, prepared.test.images)


def test_corrupt_file_is_named(tmp_path: Path, prepared: PreparedData) -> None:
    save_prepared(prepared, tmp_path)
    (tmp_path / "split.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"split\.npz"):
        load_prepared(tmp_path)
