"""Tests for fetching raw files, checksums and crash-safe decompression."""

from __future__ import annotations

import gzip
import hashlib
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import pytest

from pipeline.data import (
    ChecksumError,
    DataError,
    DataUnavailableError,
    fetch_dataset,
    load_checksums,
    sha256_file,
    torchvision_downloader,
    verify_file,
)

REPO_CHECKSUMS = Path(__file__).parents[2] / "checksums" / "fashion-mnist.sha256"
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _failing_downloader(name: str, raw_dir: Path) -> None:
    raise URLError("no network")


def _must_not_download(name: str, raw_dir: Path) -> None:
    raise AssertionError(f"downloader called for {name}")


@pytest.fixture
def system_dir(tmp_path: Path, write_idx: Callable[[Path, np.ndarray], Path]) -> Path:
    """A Debian-style folder of gzipped Fashion-MNIST IDX files (tiny)."""
    folder = tmp_path / "system"
    rng = np.random.default_rng(0)
    for fname in MNIST_FILES:
        shape = (6, 28, 28) if "images" in fname else (6,)
        write_idx(folder / f"{fname}.gz", rng.integers(0, 10, size=shape, dtype=np.uint8))
    return folder


def _decompressed_sums(system_dir: Path) -> dict[str, str]:
    sums = {}
    for fname in MNIST_FILES:
        with gzip.open(system_dir / f"{fname}.gz", "rb") as fh:
            sums[fname] = hashlib.sha256(fh.read()).hexdigest()
    return sums


def test_load_checksums_accepts_both_formats(tmp_path: Path) -> None:
    a, b = "a" * 64, "B" * 64
    path = tmp_path / "sums.sha256"
    path.write_text(f"# header\n\n{a}  123  one.bin\n{b}  two.bin\n")
    assert load_checksums(path) == {"one.bin": a, "two.bin": "b" * 64}


def test_load_checksums_rejects_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "sums.sha256"
    path.write_text("# ok\nnot-a-hash  file\n")
    with pytest.raises(DataError, match=r"sums\.sha256:2"):
        load_checksums(path)


def test_repo_checksum_file_lists_the_four_files() -> None:
    assert set(load_checksums(REPO_CHECKSUMS)) == set(MNIST_FILES)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_verify_file_mismatch_names_file_and_both_hashes(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"hello")
    actual = hashlib.sha256(b"hello").hexdigest()
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        verify_file(path, wrong)
    message = str(info.value)
    assert str(path) in message and wrong in message and actual in message
    verify_file(path, actual)


def test_system_dir_is_decompressed_and_verified(tmp_path: Path, system_dir: Path) -> None:
    sums = _decompressed_sums(system_dir)
    folder = fetch_dataset(
        "fashion_mnist",
        tmp_path / "raw",
        system_dir=system_dir,
        checksums={"fashion_mnist": sums},
        downloader=_must_not_download,
    )
    assert folder == tmp_path / "raw" / "FashionMNIST" / "raw"
    for fname in MNIST_FILES:
        with gzip.open(system_dir / f"{fname}.gz", "rb") as fh:
            assert (folder / fname).read_bytes() == fh.read()
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_FILES)


def test_bad_checksum_from_system_dir_leaves_no_file(tmp_path: Path, system_dir: Path) -> None:
    sums = _decompressed_sums(system_dir)
    sums["t10k-labels-idx1-ubyte"] = "f" * 64
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte"):
        fetch_dataset(
            "fashion_mnist",
            tmp_path / "raw",
            system_dir=system_dir,
            checksums={"fashion_mnist": sums},
        )
    folder = tmp_path / "raw" / "FashionMNIST" / "raw"
    assert not (folder / "t10k-labels-idx1-ubyte").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_interrupted_decompression_leaves_no_file(tmp_path: Path, system_dir: Path) -> None:
    victim = system_dir / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-40])
    with pytest.raises(DataError, match="cannot decompress"):
        fetch_dataset("fashion_mnist", tmp_path / "raw", system_dir=system_dir)
    folder = tmp_path / "raw" / "FashionMNIST" / "raw"
    assert not (folder / "train-images-idx3-ubyte").exists()
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("system", [None, "missing"])
def test_fashion_without_sources_explains_both_options(tmp_path: Path, system: str | None) -> None:
    system_dir = None if system is None else tmp_path / system
    with pytest.raises(DataUnavailableError) as info:
        fetch_dataset(
            "fashion_mnist", tmp_path / "raw", system_dir=system_dir, downloader=_failing_downloader
        )
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "internet" in message


def test_other_dataset_without_network_names_raw_dir(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as info:
        fetch_dataset("cifar10", tmp_path / "raw", downloader=_failing_downloader)
    assert "internet" in str(info.value) and str(tmp_path / "raw") in str(info.value)


def test_downloader_that_writes_nothing_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="missing"):
        fetch_dataset("svhn", tmp_path / "raw", downloader=lambda name, raw_dir: None)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10", "cifar100", "svhn"])
def test_fetch_is_idempotent(tmp_path: Path, fake_downloader: Any, name: str) -> None:
    first = fetch_dataset(name, tmp_path, downloader=fake_downloader)
    second = fetch_dataset(name, tmp_path, downloader=fake_downloader)
    assert first == second and first.is_dir()
    assert fake_downloader.calls == [name]


def test_downloaded_fashion_is_verified(tmp_path: Path, fake_downloader: Any) -> None:
    sums = dict.fromkeys(MNIST_FILES, "0" * 64)
    with pytest.raises(ChecksumError):
        fetch_dataset(
            "fashion_mnist", tmp_path, checksums={"fashion_mnist": sums}, downloader=fake_downloader
        )


def test_checksum_tables_apply_to_their_own_dataset_only(
    tmp_path: Path, fake_downloader: Any
) -> None:
    # MNIST has Fashion-MNIST's file names: Fashion-MNIST's table must not be applied to it.
    wrong_for_mnist = {"fashion_mnist": dict.fromkeys(MNIST_FILES, "0" * 64)}
    for name in ("mnist", "cifar10"):
        assert fetch_dataset(name, tmp_path, checksums=wrong_for_mnist, downloader=fake_downloader)


def test_checksums_missing_an_entry_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no checksum recorded"):
        fetch_dataset(
            "fashion_mnist", tmp_path, checksums={"fashion_mnist": {"train-images-idx3-ubyte": "0"}}
        )


def test_unknown_dataset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        fetch_dataset("imagenet", tmp_path)


def test_torchvision_downloader_uses_torchvision_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def recorder(label: str) -> Callable[..., None]:
        return lambda **kwargs: calls.append((label, kwargs))

    # A stand-in module: importing the real torchvision costs seconds and is not under test.
    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(CIFAR100=recorder("cifar100"), SVHN=recorder("svhn"))
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    torchvision_downloader("cifar100", tmp_path)
    torchvision_downloader("svhn", tmp_path)
    assert calls == [
        ("cifar100", {"root": str(tmp_path), "train": True, "download": True}),
        ("cifar100", {"root": str(tmp_path), "train": False, "download": True}),
        ("svhn", {"root": str(tmp_path / "svhn"), "split": "train", "download": True}),
        ("svhn", {"root": str(tmp_path / "svhn"), "split": "test", "download": True}),
    ]


@pytest.mark.skipif(not SYSTEM_FASHION.exists(), reason="Debian's dataset-fashion-mnist absent")
def test_real_system_fashion_mnist_matches_repo_checksums(tmp_path: Path) -> None:
    folder = fetch_dataset(
        "fashion_mnist",
        tmp_path,
        system_dir=SYSTEM_FASHION,
        checksums={"fashion_mnist": load_checksums(REPO_CHECKSUMS)},
        downloader=_must_not_download,
    )
    assert (folder / "train-images-idx3-ubyte").stat().st_size == 47_040_016
