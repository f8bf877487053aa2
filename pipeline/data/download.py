"""Fetch raw dataset files into torchvision's on-disk layout and verify their checksums."""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.error import URLError

from pipeline.data.errors import ChecksumError, DataError, DataUnavailableError
from pipeline.data.readers import check_dataset_name
from pipeline.io import atomic_path

logger = logging.getLogger(__name__)

Downloader = Callable[[str, Path], None]
# dataset name -> {decompressed file name -> SHA-256}
Checksums = Mapping[str, Mapping[str, str]]
"""Puts the raw files of dataset ``name`` under ``raw_dir`` in torchvision's layout."""

_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fashion_mnist": ("FashionMNIST/raw", _MNIST_FILES),
    "mnist": ("MNIST/raw", _MNIST_FILES),
    "cifar10": (
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    ),
    "cifar100": ("cifar-100-python", ("train", "test")),
    "svhn": ("svhn", ("train_32x32.mat", "test_32x32.mat")),
}
_TORCHVISION_CLASSES = {
    "fashion_mnist": "FashionMNIST",
    "mnist": "MNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}


def load_checksums(path: Path) -> dict[str, str]:
    """Parse a SHA-256 list file.

    Lines are blank, ``# comments``, ``<sha256>  <bytes>  <filename>`` or ``<sha256>  <filename>``.

    Args:
        path: The checksum file.

    Returns:
        Mapping from file name to lower-case hex digest.

    Raises:
        DataError: If a line does not match either format.
    """
    checksums: dict[str, str] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) not in (2, 3) or not _SHA256.match(fields[0]):
                raise DataError(
                    f"{path}:{lineno}: expected '<sha256>  [<bytes>]  <filename>', got {line!r}"
                )
            checksums[fields[-1]] = fields[0].lower()
    return checksums


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in chunks so large files stay out of memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(where: Path, expected: str, actual: str) -> None:
    if actual.lower() != expected.lower():
        raise ChecksumError(
            f"checksum mismatch for {where}: expected sha256 {expected.lower()}, got {actual}"
        )


def verify_file(path: Path, expected: str) -> None:
    """Check a file against an expected SHA-256.

    Args:
        path: File to hash.
        expected: Expected hex digest.

    Raises:
        ChecksumError: If the digests differ; the message names the file and both digests.
    """
    _check_digest(Path(path), expected, sha256_file(path))


def dataset_dir(name: str, raw_dir: Path) -> Path:
    """Return the folder holding dataset ``name``'s raw files under ``raw_dir``."""
    check_dataset_name(name)
    return Path(raw_dir) / _LAYOUTS[name][0]


def _expected_digests(name: str, checksums: Checksums | None) -> dict[str, str | None]:
    files = _LAYOUTS[name][1]
    # Tables are per dataset: MNIST and Fashion-MNIST share file names but not contents.
    table = None if checksums is None else checksums.get(name)
    if table is None:
        return dict.fromkeys(files)
    missing = [f for f in files if f not in table]
    if missing:
        raise DataError(f"no checksum recorded for {name} file(s) {missing}")
    return {f: table[f] for f in files}


def _decompress(src: Path, dest: Path, expected: str | None) -> None:
    """Gunzip ``src`` to ``dest``, hashing on the fly; a bad digest never reaches ``dest``."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        try:
            with gzip.open(src, "rb") as fin, tmp.open("wb") as fout:
                while chunk := fin.read(_CHUNK):
                    digest.update(chunk)
                    fout.write(chunk)
        except (OSError, EOFError) as exc:
            raise DataError(f"cannot decompress {src}: {exc}") from exc
        if expected is not None:
            _check_digest(dest, expected, digest.hexdigest())


def _system_sources(system_dir: Path | None, files: list[str]) -> list[Path] | None:
    if system_dir is None:
        return None
    sources = [Path(system_dir) / f"{f}.gz" for f in files]
    if all(p.is_file() for p in sources):
        return sources
    logger.warning("%s lacks some of %s (.gz); falling back to the downloader", system_dir, files)
    return None


def _unavailable_message(name: str, raw_dir: Path) -> str:
    if name == "fashion_mnist":
        return (
            "Fashion-MNIST is not available: install Debian's dataset-fashion-mnist package "
            "(apt-get install dataset-fashion-mnist, files under "
            "/usr/share/datasets/fashion-mnist) or connect to the internet so torchvision can "
            "download it"
        )
    return (
        f"{name} is not available: connect to the internet (torchvision downloads {name} into "
        f"{raw_dir}) or place the files there yourself in torchvision's layout"
    )


def torchvision_downloader(name: str, raw_dir: Path) -> None:
    """Download dataset ``name`` with torchvision's dataset classes (both splits).

    Args:
        name: An ID dataset name.
        raw_dir: Root that torchvision downloads into.
    """
    # Imported lazily: torchvision is heavy and only needed when files are actually missing.
    from torchvision import datasets

    check_dataset_name(name)
    raw_dir = Path(raw_dir)
    if name == "svhn":
        for split in ("train", "test"):
            datasets.SVHN(root=str(raw_dir / "svhn"), split=split, download=True)
        return
    dataset_class = getattr(datasets, _TORCHVISION_CLASSES[name])
    for train in (True, False):
        dataset_class(root=str(raw_dir), train=train, download=True)


def _download(name: str, raw_dir: Path, downloader: Downloader, files: list[Path]) -> None:
    logger.info("downloading %s into %s", name, raw_dir)
    try:
        downloader(name, raw_dir)
    except (OSError, URLError, RuntimeError) as exc:
        raise DataUnavailableError(f"{_unavailable_message(name, raw_dir)} ({exc})") from exc
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataUnavailableError(
            f"{_unavailable_message(name, raw_dir)} (download finished but {missing} are missing)"
        )


def fetch_dataset(
    name: str,
    raw_dir: Path,
    *,
    system_dir: Path | None = None,
    checksums: Checksums | None = None,
    downloader: Downloader | None = None,
) -> Path:
    """Ensure dataset ``name``'s raw files exist under ``raw_dir``; idempotent.

    Fashion-MNIST is taken from ``system_dir`` (Debian's ``.gz`` files) when it holds all four
    files; every other case goes through ``downloader``.

    Args:
        name: One of the ID dataset names.
        raw_dir: Root of the raw-data tree (torchvision's layout).
        system_dir: Folder with Fashion-MNIST's ``.gz`` files, e.g. Debian's package folder.
        checksums: SHA-256 tables by dataset name, each mapping a decompressed file name to its
            digest; the files of a dataset with a table are all verified. Datasets without
            one rely on torchvision's own download check.
        downloader: Fetches missing files; defaults to :func:`torchvision_downloader`.

    Returns:
        The dataset's folder, as :func:`dataset_dir` names it.

    Raises:
        ChecksumError: If a file does not match ``checksums``.
        DataUnavailableError: If the files are absent and cannot be downloaded.
    """
    folder = dataset_dir(name, raw_dir)
    digests = _expected_digests(name, checksums)
    targets = [folder / f for f in digests]
    if all(p.is_file() for p in targets):
        _verify_all(folder, digests)
        logger.debug("%s already present in %s", name, folder)
        return folder
    sources = _system_sources(system_dir, list(digests)) if name == "fashion_mnist" else None
    if sources is not None:
        logger.info("decompressing %s from %s", name, system_dir)
        for src, (fname, expected) in zip(sources, digests.items(), strict=True):
            _decompress(src, folder / fname, expected)
        return folder
    _download(name, Path(raw_dir), downloader or torchvision_downloader, targets)
    _verify_all(folder, digests)
    return folder


def _verify_all(folder: Path, digests: dict[str, str | None]) -> None:
    for fname, expected in digests.items():
        if expected is not None:
            verify_file(folder / fname, expected)
