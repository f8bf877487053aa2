"""bench/garment_folder.py: Fashion-MNIST's tops as a user's photo folder, from IDX files made
here (Debian's copy is not needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from bench import garment_folder
from pipeline.data.folder import scan_folder
from tests.data.conftest import write_idx_file

GARMENTS = ("coat", "pullover", "shirt", "t_shirt")


def fake_fashion_mnist(folder: Path, per_class: int) -> Path:
    """Ten classes of ``per_class`` 28x28 images per split: a bright garment-like block whose
    grey level is the class's (a stand-in; only the layout matters here)."""
    for stem, seed in (("train", 0), ("t10k", 1)):
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
        images = rng.integers(0, 30, size=(len(labels), 28, 28), dtype=np.uint8)
        images[:, 4:24, 6:22] = (100 + 15 * labels)[:, None, None]
        write_idx_file(folder / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx_file(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_folder_has_four_tops_per_split_as_decodable_photos(tmp_path: Path) -> None:
    source = fake_fashion_mnist(tmp_path / "fmnist", per_class=5)
    root = garment_folder.make_garment_folder(tmp_path / "out", source, 4, 2, seed=0)
    for split, count in (("train", 4), ("test", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == list(GARMENTS)
        for name in GARMENTS:
            files = sorted((root / split / name).iterdir())
            assert len(files) == count
            for path in files:
                with Image.open(path) as image:
                    upright = ImageOps.exif_transpose(image)
                    assert min(upright.size) >= 60 and max(upright.size) <= 400
    # The pipeline's own scan reads the layout as the data stage would.
    assert scan_folder(root / "train").class_names == sorted(GARMENTS)


def test_the_same_arguments_give_the_same_bytes(tmp_path: Path) -> None:
    source = fake_fashion_mnist(tmp_path / "fmnist", per_class=3)
    first = garment_folder.make_garment_folder(tmp_path / "a", source, 2, 1, seed=3)
    second = garment_folder.make_garment_folder(tmp_path / "b", source, 2, 1, seed=3)
    other = garment_folder.make_garment_folder(tmp_path / "c", source, 2, 1, seed=4)
    assert folder_bytes(first) == folder_bytes(second)
    assert folder_bytes(first) != folder_bytes(other)


def test_bad_arguments_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = fake_fashion_mnist(tmp_path / "fmnist", per_class=2)
    with pytest.raises(ValueError, match=r"train photos per class must be in 1\.\.6000, got 0"):
        garment_folder.make_garment_folder(tmp_path / "o", source, 0, 1)
    with pytest.raises(ValueError, match=r"test photos per class must be in 1\.\.1000, got 1001"):
        garment_folder.make_garment_folder(tmp_path / "o", source, 1, 1001)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        garment_folder.make_garment_folder(tmp_path / "full", source, 1, 1)
    args = [str(tmp_path / "o"), "--fashion-mnist", str(tmp_path / "none")]
    assert garment_folder.main(args) == 2
    err = capsys.readouterr().err
    assert "has no train-images-idx3-ubyte(.gz)" in err and "dataset-fashion-mnist" in err
