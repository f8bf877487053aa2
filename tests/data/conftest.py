"""Writers of small raw dataset files in the real on-disk formats, for offline tests."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pipeline.data import ImageSet, num_classes

RawWriter = Callable[..., tuple[ImageSet, ImageSet]]


def write_idx_file(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an unsigned-byte IDX file, gzipped when ``path`` ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else Path.open
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wb") as fh:
        fh.write(payload)
    return path


def _image_set(n: int, shape: tuple[int, int, int], classes: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return ImageSet(images, (np.arange(n) % classes).astype(np.int64))


def _write_mnist_like(folder: Path, train: ImageSet, test: ImageSet) -> None:
    for prefix, split in (("train", train), ("t10k", test)):
        write_idx_file(folder / f"{prefix}-images-idx3-ubyte", split.images[..., 0])
        write_idx_file(folder / f"{prefix}-labels-idx1-ubyte", split.labels.astype(np.uint8))


def _write_pickle(path: Path, split: ImageSet, label_key: bytes) -> None:
    flat = split.images.transpose(0, 3, 1, 2).reshape(len(split), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump({b"data": flat, label_key: split.labels.tolist()}, fh)


def _write_svhn(path: Path, split: ImageSet) -> None:
    stored = split.labels.copy()
    stored[stored == 0] = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": split.images.transpose(1, 2, 3, 0), "y": stored[:, None]})


def write_raw_dataset(
    name: str, raw_dir: Path, *, n_train: int = 40, n_test: int = 20, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """Write a tiny random ``name`` into ``raw_dir`` in torchvision's layout; return the truth."""
    shape = (28, 28, 1) if name in ("fashion_mnist", "mnist") else (32, 32, 3)
    classes = num_classes(name)
    train = _image_set(n_train, shape, classes, seed)
    test = _image_set(n_test, shape, classes, seed + 1)
    if name == "fashion_mnist":
        _write_mnist_like(raw_dir / "FashionMNIST" / "raw", train, test)
    elif name == "mnist":
        _write_mnist_like(raw_dir / "MNIST" / "raw", train, test)
    elif name == "cifar10":
        folder = raw_dir / "cifar-10-batches-py"
        for i, chunk in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            _write_pickle(folder / f"data_batch_{i}", train.subset(chunk), b"labels")
        _write_pickle(folder / "test_batch", test, b"labels")
    elif name == "cifar100":
        _write_pickle(raw_dir / "cifar-100-python" / "train", train, b"fine_labels")
        _write_pickle(raw_dir / "cifar-100-python" / "test", test, b"fine_labels")
    else:
        _write_svhn(raw_dir / "svhn" / "train_32x32.mat", train)
        _write_svhn(raw_dir / "svhn" / "test_32x32.mat", test)
    return train, test


class FakeDownloader:
    """Stands in for torchvision: writes tiny raw files and records each call."""

    def __init__(self, n_train: int = 40, n_test: int = 20) -> None:
        self.calls: list[str] = []
        self.n_train = n_train
        self.n_test = n_test

    def __call__(self, name: str, raw_dir: Path) -> None:
        self.calls.append(name)
        write_raw_dataset(name, raw_dir, n_train=self.n_train, n_test=self.n_test)


@pytest.fixture
def write_idx() -> Callable[[Path, np.ndarray], Path]:
    """The IDX writer."""
    return write_idx_file


@pytest.fixture
def write_raw() -> RawWriter:
    """The raw-dataset writer."""
    return write_raw_dataset


@pytest.fixture
def fake_downloader() -> FakeDownloader:
    """A fresh recording downloader."""
    return FakeDownloader()
