"""bench/photo_folder.py: the synthetic user's photo folder of drawn shapes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps
from scipy import ndimage
from scipy.spatial import ConvexHull

from pipeline.data.folder import scan_folder
from pipeline.images import read_image
from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "photo_folder.py"
SHAPES = ("circle", "square", "triangle", "star")
LUMA = np.array([0.299, 0.587, 0.114])


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("photo_folder", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` by its relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def upright(path: Path) -> Image.Image:
    """The file decoded as a viewer shows it: EXIF orientation applied."""
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image) or image


@pytest.fixture(scope="module")
def script() -> Any:
    return load_script()


@pytest.fixture(scope="module")
def moderate(script: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 training and 20 test photos per class, seed 0."""
    return script.make_photo_folder(
        tmp_path_factory.mktemp("photos") / "out", per_class=20, test_per_class=20
    )


def test_the_folder_has_train_and_test_splits_of_the_four_classes(
    script: Any, tmp_path: Path
) -> None:
    root = script.make_photo_folder(tmp_path / "out", per_class=3, test_per_class=2)
    assert root == tmp_path / "out"
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    for split, count in (("train", 3), ("test", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(SHAPES)
        for shape in SHAPES:
            files = sorted((root / split / shape).iterdir())
            assert len(files) == count
            assert all(f.name.startswith(f"{shape}_") for f in files)
    # The data stage reads it as a folder with explicit splits, labels by sorted class name.
    layout = scan_folder(root)
    assert layout.class_names == sorted(SHAPES) and layout.ignored == 0
    assert {split: len(files) for split, files in layout.files.items()} == {"train": 12, "test": 8}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_photos(
    script: Any, tmp_path: Path
) -> None:
    first = folder_bytes(script.make_photo_folder(tmp_path / "a", per_class=3, test_per_class=2))
    again = folder_bytes(script.make_photo_folder(tmp_path / "b", per_class=3, test_per_class=2))
    other = folder_bytes(
        script.make_photo_folder(tmp_path / "c", per_class=3, test_per_class=2, seed=1)
    )
    assert len(first) == 20 and first == again
    assert set(first.values()).isdisjoint(other.values())
    # Train and test photos come from different seeds: no test photo repeats a training one.
    train = {v for k, v in first.items() if k.startswith("train/")}
    assert train.isdisjoint(v for k, v in first.items() if k.startswith("test/"))


def test_a_moderate_folder_mixes_formats_modes_sizes_and_exif_rotation(moderate: Path) -> None:
    formats, modes, sizes, oriented = set(), set(), set(), 0
    for path in moderate.rglob("*.*"):
        with Image.open(path) as image:
            formats.add(image.format)
            modes.add(image.mode)
            sizes.add(image.size)
            suffix = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[image.format]
            assert path.suffix == suffix
            if image.getexif().get(0x0112) in (6, 8):
                assert image.format == "JPEG"
                oriented += 1
            assert all(60 <= side <= 400 for side in image.size)
    assert formats == {"PNG", "JPEG", "WEBP"}
    assert {"RGB", "L", "P"} <= modes
    assert len(sizes) > 5
    assert oriented >= 1


def test_exif_rotated_jpegs_come_out_upright(script: Any, moderate: Path) -> None:
    """Decoded with the EXIF orientation applied, a rotated JPEG is the drawn picture again,
    up to JPEG loss; turned the other way round it is not."""
    rotated = []
    for path in sorted(moderate.rglob("*.jpg")):
        with Image.open(path) as image:
            if image.getexif().get(0x0112) in (6, 8):
                rotated.append(path)
    assert rotated
    further = []
    for path in rotated:
        split, shape = path.parent.parent.name, path.parent.name
        index = int(path.stem.rsplit("_", 1)[1])
        drawn = script.draw_photo(shape, script.photo_rng(0, split, shape, index))
        shown = upright(path)
        with Image.open(path) as stored:
            assert stored.size == (drawn.height, drawn.width)  # stored sideways
        assert shown.size == drawn.size
        drawn = drawn.convert(shown.mode)

        def diff(image: Image.Image, drawn: Image.Image = drawn) -> float:
            # Averaged over 8x8-pixel-ish blocks: the pixel noise and JPEG loss cancel out.
            small = [
                np.asarray(im.resize((24, 24), Image.Resampling.BOX), float)
                for im in (image, drawn)
            ]
            return float(np.abs(small[0] - small[1]).mean())

        assert diff(shown) < 4, path
        further.append(diff(shown.transpose(Image.Transpose.ROTATE_180)) / max(diff(shown), 0.1))
    # Turned 180°, most photos (an off-centre object, a gradient) are clearly another picture.
    assert np.median(further) > 3


def test_mean_colour_does_not_tell_the_class(moderate: Path) -> None:
    """A nearest-class-mean classifier on mean RGB, fitted on train, is near chance on test."""

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for k, shape in enumerate(SHAPES):
            for path in sorted((moderate / split / shape).iterdir()):
                rows.append(np.asarray(upright(path).convert("RGB"), float).mean(axis=(0, 1)))
                labels.append(k)
        return np.array(rows), np.array(labels)

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    means = np.stack([x_train[y_train == k].mean(axis=0) for k in range(len(SHAPES))])
    predicted = np.linalg.norm(x_test[:, None] - means[None], axis=2).argmin(axis=1)
    assert len(y_test) == 80
    assert (predicted == y_test).mean() < 0.6


def roundness_and_solidity(mask: np.ndarray) -> tuple[float, float]:
    """Area over the circle about the centroid through the farthest pixel, and over the convex
    hull: about 1 and 1 for a circle, 0.64 and 1 for a square, 0.41 and 1 for a triangle, under
    0.5 and about 0.5 for a star."""
    points = np.argwhere(mask).astype(float)
    reach = np.linalg.norm(points - points.mean(axis=0), axis=1).max() + 0.5
    return len(points) / (np.pi * reach**2), len(points) / ConvexHull(points).volume


def test_each_photo_shows_its_shape_standing_out_from_the_background(script: Any) -> None:
    shares: dict[str, list[float]] = {shape: [] for shape in SHAPES}
    for shape in SHAPES:
        for i in range(20):
            picture, mask = script.draw_scene(shape, script.photo_rng(0, "train", shape, i))
            assert mask.shape == (picture.height, picture.width)
            shares[shape].append(mask.mean())
            luma = np.asarray(picture, float) @ LUMA
            # Fill and background differ by at least 40 in luma everywhere. Compared a few
            # pixels away from the edge, where an outline of any colour may lie; medians, so
            # that noise and clutter do not count.
            inside = ndimage.binary_erosion(mask, iterations=5)
            outside = ~ndimage.binary_dilation(mask, iterations=5)
            if inside.sum() > 20:
                gap = abs(np.median(luma[inside]) - np.median(luma[outside]))
                assert gap > 30, (shape, i, gap)
            whole = not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            if not whole:
                continue  # cut by the frame: the measures below would not hold
            round_, solid = roundness_and_solidity(mask)
            if shape == "circle":
                assert round_ > 0.85 and solid > 0.9, (shape, i, round_, solid)
            elif shape == "square":
                assert 0.55 < round_ < 0.75 and solid > 0.9, (shape, i, round_, solid)
            elif shape == "triangle":
                assert round_ < 0.55 and solid > 0.9, (shape, i, round_, solid)
            else:
                assert round_ < 0.55 and solid < 0.7, (shape, i, round_, solid)
    for shape, values in shares.items():
        # From a small triangle in a 2:1 frame (1.5%) to a large circle in a square one (50%).
        assert min(values) > 0.015 and max(values) < 0.6, shape
        assert np.mean(values) > 0.05, shape


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_refuses_a_non_empty_folder_and_bad_counts_and_fills_a_new_one(
    tmp_path: Path,
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine\n")
    done = run_script(str(busy), "--per-class", "1", "--test-per-class", "1")
    assert done.returncode == 2 and "not an empty folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    done = run_script(str(tmp_path / "none"), "--per-class", "0")
    assert done.returncode == 2 and "at least 1" in done.stderr
    assert not (tmp_path / "none").exists()

    out = tmp_path / "new" / "photos"
    done = run_script(str(out), "--per-class", "2", "--test-per-class", "1", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        f"wrote 12 photos (2 train + 1 test per class, 4 classes) to {out}"
    ]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 12
    for path in files:  # every photo decodes with the pipeline's own reader
        pixels = read_image(path.read_bytes(), max_pixels=400 * 400)
        assert pixels.ndim == 3 and pixels.shape[2] in (1, 3)
    # An empty folder that exists is fine too.
    (tmp_path / "empty").mkdir()
    assert (
        run_script(str(tmp_path / "empty"), "--per-class", "1", "--test-per-class", "1").returncode
        == 0
    )
