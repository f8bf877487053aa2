"""Tests for the raw-file readers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io

from pipeline.data import DataError, ImageSet, load_id_dataset, num_classes, read_idx
from pipeline.data.download import dataset_dir


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5)])
def test_read_idx_round_trips(
    tmp_path: Path,
    write_idx: Callable[[Path, np.ndarray], Path],
    suffix: str,
    shape: tuple[int, ...],
) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    result = read_idx(write_idx(tmp_path / f"file{suffix}", array))
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, array)


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00")
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        read_idx(path)


def test_read_idx_rejects_truncated_payload(
    tmp_path: Path, write_idx: Callable[[Path, np.ndarray], Path]
) -> None:
    path = write_idx(tmp_path / "short", np.zeros((2, 3, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"dims \(2, 3, 3\)"):
        read_idx(path)


@pytest.mark.parametrize(
    ("name", "channels"),
    [("fashion_mnist", 1), ("mnist", 1), ("cifar10", 3), ("cifar100", 3), ("svhn", 3)],
)
def test_load_id_dataset_round_trips(
    tmp_path: Path, write_raw: Callable[..., tuple[ImageSet, ImageSet]], name: str, channels: int
) -> None:
    truth = write_raw(name, tmp_path, n_train=30, n_test=15)
    loaded = load_id_dataset(name, dataset_dir(name, tmp_path))
    for want, got in zip(truth, loaded, strict=True):
        assert got.images.dtype == np.uint8 and got.labels.dtype == np.int64
        assert got.images.shape[3] == channels
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_array_equal(got.labels, want.labels)


def test_svhn_label_ten_becomes_zero(
    tmp_path: Path, write_raw: Callable[..., tuple[ImageSet, ImageSet]]
) -> None:
    write_raw("svhn", tmp_path, n_train=20, n_test=10)
    folder = dataset_dir("svhn", tmp_path)
    stored: Any = scipy.io.loadmat(folder / "test_32x32.mat")["y"]
    assert 10 in stored and 0 not in stored
    _, test = load_id_dataset("svhn", folder)
    assert 0 in test.labels and 10 not in test.labels
    np.testing.assert_array_equal(test.labels, np.where(stored[:, 0] == 10, 0, stored[:, 0]))


def test_missing_file_is_named(
    tmp_path: Path, write_raw: Callable[..., tuple[ImageSet, ImageSet]]
) -> None:
    write_raw("cifar10", tmp_path)
    folder = dataset_dir("cifar10", tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_id_dataset("cifar10", folder)


def test_corrupt_pickle_is_named(
    tmp_path: Path, write_raw: Callable[..., tuple[ImageSet, ImageSet]]
) -> None:
    write_raw("cifar100", tmp_path)
    folder = dataset_dir("cifar100", tmp_path)
    (folder / "test").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test"):
        load_id_dataset("cifar100", folder)


def test_gzipped_mnist_files_are_read(
    tmp_path: Path, write_idx: Callable[[Path, np.ndarray], Path]
) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    labels = np.array([3, 7], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    train, _ = load_id_dataset("mnist", tmp_path)
    np.testing.assert_array_equal(train.images[..., 0], images)
    assert train.labels.tolist() == [3, 7]


def test_image_set_validates_shapes() -> None:
    good = np.zeros((2, 4, 4, 1), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(good[..., 0], np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="int64"):
        ImageSet(good, np.zeros(2, dtype=np.int32))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageSet(good, np.zeros(3, dtype=np.int64))


def test_num_classes() -> None:
    names = ("fashion_mnist", "mnist", "cifar10", "cifar100", "svhn")
    assert {n: num_classes(n) for n in names} == dict(
        zip(names, (10, 10, 10, 100, 10), strict=True)
    )
    with pytest.raises(ValueError, match="unknown dataset 'stl10'"):
        num_classes("stl10")
