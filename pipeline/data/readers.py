"""Parse raw dataset files directly (torchvision's readers would reject locally made files)."""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from pipeline.data.errors import DataError

_NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}
ID_DATASETS: tuple[str, ...] = tuple(_NUM_CLASSES)
_IDX_UINT8 = 0x08


# eq=False: field-wise equality and hashing are meaningless for numpy arrays.
@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images with their labels.

    Attributes:
        images: uint8 array of shape (N, H, W, C).
        labels: int64 array of shape (N,).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.ndim != 1 or self.labels.dtype != np.int64:
            raise ValueError(
                f"labels must be int64 (N,), got {self.labels.dtype} {self.labels.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels; counts must match"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSet:
        """Return the images and labels at ``indices``."""
        return ImageSet(self.images[indices], self.labels[indices])


def check_dataset_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a known ID dataset."""
    if name not in _NUM_CLASSES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(ID_DATASETS)}")


def num_classes(name: str) -> int:
    """Return the number of classes of ID dataset ``name``."""
    check_dataset_name(name)
    return _NUM_CLASSES[name]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (magic 0x0801, 0x0803, ...), gzipped or not.

    Args:
        path: The file; a ``.gz`` suffix means gzip-compressed.

    Returns:
        uint8 array whose shape is given by the file's big-endian dimensions.

    Raises:
        DataError: If the header or the payload size is invalid.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else Path.open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != _IDX_UINT8 or data[3] == 0:
        raise DataError(f"{path} is not an unsigned-byte IDX file (header {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{path}: dims {dims} need {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing {folder / stem} (or .gz)")


def _load_mnist_like(folder: Path) -> tuple[ImageSet, ImageSet]:
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(
                f"{folder}: {prefix} images/labels have shapes {images.shape}/{labels.shape}"
            )
        splits.append(ImageSet(images[..., None], labels.astype(np.int64)))
    return splits[0], splits[1]


def _unpickle(path: Path) -> dict[bytes, object]:
    if not path.is_file():
        raise DataError(f"missing {path}")
    try:
        with path.open("rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"cannot unpickle {path}: {exc}") from exc


def _cifar_batches(paths: list[Path], label_key: bytes) -> ImageSet:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (KeyError, ValueError) as exc:
            raise DataError(f"{path} is not a CIFAR batch with {label_key!r}: {exc}") from exc
    return ImageSet(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


def _load_svhn_split(path: Path) -> ImageSet:
    if not path.is_file():
        raise DataError(f"missing {path}")
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, OSError, scipy.io.matlab.MatReadError) as exc:
        raise DataError(f"cannot read MATLAB file {path}: {exc}") from exc
    try:
        x, y = mat["X"], mat["y"]
    except KeyError as exc:
        raise DataError(f"{path} lacks variable {exc}; expected 'X' and 'y'") from exc
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X must be (32, 32, 3, N), got {x.shape}")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    # SVHN stores digit 0 as label 10.
    labels[labels == 10] = 0
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8, copy=False))
    return ImageSet(images, labels)


def load_id_dataset(name: str, dataset_dir: Path) -> tuple[ImageSet, ImageSet]:
    """Load the train and test splits of an ID dataset from its raw folder.

    Args:
        name: One of :data:`ID_DATASETS`.
        dataset_dir: The folder :func:`pipeline.data.download.fetch_dataset` returns.

    Returns:
        ``(train, test)`` with NHWC uint8 images (C=1 for the MNISTs, 3 otherwise).

    Raises:
        DataError: If a file is missing or malformed.
    """
    check_dataset_name(name)
    folder = Path(dataset_dir)
    if name in ("fashion_mnist", "mnist"):
        return _load_mnist_like(folder)
    if name == "cifar10":
        train_paths = [folder / f"data_batch_{i}" for i in range(1, 6)]
        return (
            _cifar_batches(train_paths, b"labels"),
            _cifar_batches([folder / "test_batch"], b"labels"),
        )
    if name == "cifar100":
        return (
            _cifar_batches([folder / "train"], b"fine_labels"),
            _cifar_batches([folder / "test"], b"fine_labels"),
        )
    return _load_svhn_split(folder / "train_32x32.mat"), _load_svhn_split(folder / "test_32x32.mat")
