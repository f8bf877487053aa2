"""A second synthetic "user's photo folder", of another kind: Fashion-MNIST garments as photos.

The shapes of ``bench/photo_folder.py`` are told apart by a pretrained backbone at about 99%,
so calibration differences between objectives drown in noise there. This folder is harder and
of a different kind: the four garment classes of Fashion-MNIST that people (and networks)
confuse most (T-shirt/top, pullover, coat, shirt), each 28x28 garment scaled up to a photo of
mixed size, tinted in a random colour over a random solid or gradient background, turned by up
to 15 degrees, with sensor-like noise; then stored as ``bench/photo_folder.py`` stores its
photos (PNG, JPEG, WebP; RGB, grey, RGBA, palette; some JPEGs EXIF-rotated). Colours are drawn
independently of the class, so only the garment's form tells it.

Train photos come from Fashion-MNIST's training split and test photos from its test split, so
no garment is in both. Layout: ``OUT/train/<class>/<file>`` and ``OUT/test/<class>/<file>``.
The same arguments and source files give the same bytes.

Usage: python bench/garment_folder.py OUT [--per-class 150] [--test-per-class 60] [--seed 0]
           [--fashion-mnist /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

if not __package__:  # run as ``python bench/garment_folder.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.photo_folder import draw_background, encode_photo, fill_colour, written
from pipeline.data.readers import read_idx

# Fashion-MNIST label -> folder name: the four upper-body garments, its most confused classes.
GARMENTS: dict[int, str] = {0: "t_shirt", 2: "pullover", 4: "coat", 6: "shirt"}
SPLITS: dict[str, str] = {"train": "train", "test": "t10k"}
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def load_garments(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``split`` (train | test) from ``source``: uint8 images and labels.

    Raises:
        FileNotFoundError: ``source`` lacks the split's two IDX files (``.gz`` or not).
    """
    stem = SPLITS[split]
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [source / f"{stem}-{kind}.gz", source / f"{stem}-{kind}"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"{source} has no {stem}-{kind}(.gz): install Debian's dataset-fashion-mnist "
                "(make setup does) or pass --fashion-mnist"
            )
        paths.append(found)
    return read_idx(paths[0]), read_idx(paths[1])


def draw_garment(garment: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One upright RGB photo of a 28x28 grey ``garment`` (0 background, 255 cloth).

    The garment is scaled to 50-90% of the frame's shorter side (bicubic), turned by up to 15
    degrees, placed on the frame's central square and tinted: each pixel mixes the background
    and a fill colour by the garment's intensity, so texture and folds stay visible.
    """
    width = int(rng.integers(60, 401))
    height = int(rng.integers(max(60, width // 2), min(400, 2 * width) + 1))
    pixels = draw_background(rng, width, height)
    fill = np.array(fill_colour(rng, pixels), dtype=np.float64)
    side = min(width, height)
    size = max(8, int(rng.uniform(0.5, 0.9) * side))
    cloth = Image.fromarray(garment, "L").resize((size, size), Image.Resampling.BICUBIC)
    cloth = cloth.rotate(float(rng.uniform(-15, 15)), Image.Resampling.BILINEAR, expand=True)
    alpha = np.asarray(cloth, dtype=np.float64) / 255.0
    # The cloth's centre lies on the frame's central square, so a centre crop keeps it; it may
    # stick out of the frame by a little, as a hurried photo does.
    h, w = alpha.shape
    cx = (width - side) / 2 + rng.uniform(0.4, 0.6) * side
    cy = (height - side) / 2 + rng.uniform(0.4, 0.6) * side
    top, left = round(cy - h / 2), round(cx - w / 2)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, height), min(left + w, width)
    a = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
    region = pixels[y0:y1, x0:x1]
    pixels[y0:y1, x0:x1] = region * (1 - a) + fill * a
    sigma = rng.uniform(0, 20)
    noisy = pixels + rng.normal(0, sigma, pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def make_garment_folder(
    root: Path,
    source: Path = SYSTEM_FASHION_MNIST,
    per_class: int = 150,
    test_per_class: int = 60,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,test}/<garment>/<garment>_<index>.<ext>`` and return ``root``.

    Args:
        root: A folder that does not exist yet or is empty.
        source: Fashion-MNIST's IDX files (Debian's ``dataset-fashion-mnist`` folder).
        per_class: Training photos per class (at most 6000, Fashion-MNIST's per class).
        test_per_class: Test photos per class (at most 1000).
        seed: Picks the garments and draws their photos.

    Returns:
        ``root``.

    Raises:
        ValueError: A count below 1 or above what Fashion-MNIST holds.
        FileExistsError: ``root`` exists and is not an empty folder.
        FileNotFoundError: ``source`` lacks Fashion-MNIST.
    """
    for name, count, most in (("train", per_class, 6000), ("test", test_per_class, 1000)):
        if not 1 <= count <= most:
            raise ValueError(f"{name} photos per class must be in 1..{most}, got {count}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not an empty folder")
    for split_index, (split, count) in enumerate((("train", per_class), ("test", test_per_class))):
        images, labels = load_garments(source, split)
        for label, name in GARMENTS.items():
            pick = np.random.default_rng([seed, split_index, label]).permutation(
                np.flatnonzero(labels == label)
            )[:count]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(pick):
                # One generator per photo, seeded by its place, as bench/photo_folder.py does.
                rng = np.random.default_rng([seed, split_index, label, i, 1])
                data, suffix = encode_photo(draw_garment(images[index], rng), rng)
                (folder / f"{name}_{i:04d}{suffix}").write_bytes(data)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to create (must not exist or be empty)")
    p.add_argument("--per-class", type=int, default=150, help="training photos per class")
    p.add_argument("--test-per-class", type=int, default=60, help="test photos per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fashion-mnist", type=Path, default=SYSTEM_FASHION_MNIST)
    args = p.parse_args(argv)
    try:
        make_garment_folder(
            args.out, args.fashion_mnist, args.per_class, args.test_per_class, args.seed
        )
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"garment_folder.py: {err}", file=sys.stderr)
        return 2
    print(written(args.out, len(GARMENTS), args.per_class, args.test_per_class))
    return 0


if __name__ == "__main__":
    sys.exit(main())
