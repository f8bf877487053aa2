"""A synthetic "user's photo folder": drawn circles, squares, triangles and stars.

It stands in for a user's own photos when measuring whether a fine-tuned pretrained backbone
learns from a small folder, so it shares nothing with Fashion-MNIST. Each photo is one filled
object (random size, position, rotation, fill colour, optional outline) on a solid or gradient
background of random colours, with Gaussian noise and a few distractor lines and dots: fill and
background colours are drawn independently of the class, so only the shape tells the class.
Photos have mixed sizes (60-400 pixels a side), formats (PNG, JPEG, WebP) and modes (RGB, grey,
RGBA, palette); about one JPEG in ten is stored rotated with an EXIF orientation tag.

Layout (the data stage's ImageFolder with explicit splits): ``OUT/train/<class>/<file>`` and
``OUT/test/<class>/<file>``, train and test drawn from disjoint seeds. The same arguments give
the same bytes.

Usage: python bench/photo_folder.py OUT [--per-class 150] [--test-per-class 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SPLITS: tuple[str, ...] = ("train", "test")
EXIF_ORIENTATION = 0x0112
# Modes each format can store as such, with their shares: Pillow would silently convert the
# others (WebP keeps no grey or palette image, JPEG no alpha or palette), so the mode is picked
# after the format. Mostly colour, as a phone's photos; alpha is always opaque, so a decoder that
# drops it or composites onto any colour sees the same picture.
FORMAT_MODES: dict[str, dict[str, float]] = {
    "PNG": {"RGB": 0.4, "L": 0.2, "RGBA": 0.2, "P": 0.2},
    "JPEG": {"RGB": 0.8, "L": 0.2},
    "WEBP": {"RGB": 0.7, "RGBA": 0.3},
}
SUFFIXES: dict[str, str] = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
# Share of photos per format, in FORMAT_MODES order: JPEG most common, as in a phone's folder.
FORMAT_SHARES = (0.35, 0.45, 0.2)
ROTATED_JPEG_SHARE = 0.1
# EXIF orientation -> the transpose that stores an upright picture so that a viewer applying
# the tag (ImageOps.exif_transpose) shows it upright again: 6 means "turn 90° clockwise to
# view", so the stored pixels are the picture turned 90° counter-clockwise; 8 the reverse.
STORED_TRANSPOSE: dict[int, Image.Transpose] = {
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
# ITU-R 601 luma, as Pillow's convert("L") and the pipeline's match_channels.
_LUMA = np.array([0.299, 0.587, 0.114])
# The object's luma differs by at least this much from every background luma, so it stays
# visible in photos stored grey (two colours of equal luma become one grey).
_MIN_LUMA_GAP = 40.0


def photo_rng(seed: int, split: str, shape: str, index: int) -> np.random.Generator:
    """The generator for photo ``index`` of class ``shape`` in ``split``.

    One generator per photo, seeded by its place: a photo does not change when the counts do,
    and train and test photos come from disjoint seeds.
    """
    return np.random.default_rng([seed, SPLITS.index(split), SHAPES.index(shape), index])


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float64)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (int(c) for c in colour)
    return red, green, blue


def draw_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A ``(height, width, 3)`` float background: one colour, or a linear gradient of two."""
    first = _colour(rng)
    if rng.random() < 0.4:
        return np.broadcast_to(first, (height, width, 3)).copy()
    second = _colour(rng)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    t = (along - along.min()) / max(along.max() - along.min(), 1.0)
    return first + t[..., None] * (second - first)


def fill_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random colour whose luma keeps :data:`_MIN_LUMA_GAP` from all of ``background``'s."""
    luma = background @ _LUMA
    low, high = luma.min() - _MIN_LUMA_GAP, luma.max() + _MIN_LUMA_GAP
    for _ in range(32):
        colour = _colour(rng)
        if not low < colour @ _LUMA < high:
            return _rgb(colour)
    # A background spanning nearly all lumas: black or white, whichever is farther.
    return (0, 0, 0) if low > 255 - high else (255, 255, 255)


def _polygon(
    shape: str, cx: float, cy: float, radius: float, turn: float, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Corners of ``shape`` (circumradius ``radius``) about ``(cx, cy)``, turned by ``turn``."""
    if shape == "star":
        inner = radius * rng.uniform(0.38, 0.5)
        radii = [radius if k % 2 == 0 else inner for k in range(10)]
    else:
        radii = [radius] * (4 if shape == "square" else 3)
    step = 2 * math.pi / len(radii)
    return [
        (cx + r * math.sin(turn + k * step), cy - r * math.cos(turn + k * step))
        for k, r in enumerate(radii)
    ]


def draw_scene(shape: str, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """One upright RGB photo of ``shape`` and the boolean ``(height, width)`` mask of its object.

    Args:
        shape: One of :data:`SHAPES`.
        rng: Draws everything about the photo; the same state gives the same photo.

    Returns:
        The picture before encoding, and the object's area (an outline, when drawn, lies
        along its edge, mostly inside).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    width = int(rng.integers(60, 401))
    # Aspect ratios within 1:2 and 2:1, as cameras and crops give.
    height = int(rng.integers(max(60, width // 2), min(400, 2 * width) + 1))
    pixels = draw_background(rng, width, height)
    fill = fill_colour(rng, pixels)
    side = min(width, height)
    size = rng.uniform(0.3, 0.8) * side
    # The object centres on the central square of the frame (sticking out by up to 15% of its
    # size): a centre crop to a square, as the data stage's resize policy does, keeps it.
    slack = size / 2 - 0.15 * size
    cx = (width - side) / 2 + rng.uniform(slack, side - slack)
    cy = (height - side) / 2 + rng.uniform(slack, side - slack)
    outline = _rgb(_colour(rng)) if rng.random() < 0.5 else None
    outline_width = int(rng.integers(1, 5))

    image = Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")
    mask = Image.new("L", (width, height), 0)
    on_photo, on_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    if shape == "circle":
        box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        on_photo.ellipse(box, fill=fill, outline=outline, width=outline_width)
        on_mask.ellipse(box, fill=255)
    else:
        corners = _polygon(shape, cx, cy, size / 2, rng.uniform(0, 2 * math.pi), rng)
        on_photo.polygon(corners, fill=fill, outline=outline, width=outline_width)
        on_mask.polygon(corners, fill=255)
    # Distractors after the object, in colours of their own: clutter, on it and around it.
    for _ in range(int(rng.integers(0, 4))):
        ends = rng.uniform(0, 1, size=4) * (width, height, width, height)
        on_photo.line(ends.tolist(), fill=_rgb(_colour(rng)), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 6))):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, 4)
        on_photo.ellipse((x - r, y - r, x + r, y + r), fill=_rgb(_colour(rng)))

    # Sensor-like noise over everything, of a strength from none to grainy.
    sigma = rng.uniform(0, 25)
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, sigma, (height, width, 3))
    photo = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")
    return photo, np.asarray(mask) > 0


def draw_photo(shape: str, rng: np.random.Generator) -> Image.Image:
    """The upright RGB picture of one photo of ``shape`` before encoding: :func:`draw_scene`'s."""
    return draw_scene(shape, rng)[0]


def encode_photo(picture: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    """``picture`` stored in a random format and mode, as ``(file bytes, suffix)``.

    JPEG and WebP use a random quality of 60-95; about one JPEG in ten stores the picture
    turned with an EXIF orientation of 6 or 8, so that applying the tag shows it upright.
    """
    fmt = str(rng.choice(list(FORMAT_MODES), p=FORMAT_SHARES))
    modes = FORMAT_MODES[fmt]
    mode = str(rng.choice(list(modes), p=list(modes.values())))
    # A palette image gets an adaptive palette, as image editors write, not Pillow's web one.
    stored = picture.quantize(colors=256) if mode == "P" else picture.convert(mode)
    options: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(rng.integers(60, 96))
    if fmt == "JPEG" and rng.random() < ROTATED_JPEG_SHARE:
        orientation = int(rng.choice(list(STORED_TRANSPOSE)))
        stored = stored.transpose(STORED_TRANSPOSE[orientation])
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    stored.save(buffer, fmt, **options)
    return buffer.getvalue(), SUFFIXES[fmt]


def make_photo_folder(
    root: Path, per_class: int = 150, test_per_class: int = 60, seed: int = 0
) -> Path:
    """Write ``root/{train,test}/<shape>/<shape>_<index>.<ext>`` and return ``root``.

    Args:
        root: A folder that does not exist yet or is empty.
        per_class: Training photos per class.
        test_per_class: Test photos per class.
        seed: Photo ``i`` of a class and split is drawn from :func:`photo_rng`.

    Returns:
        ``root``.

    Raises:
        ValueError: A count below 1.
        FileExistsError: ``root`` exists and is not an empty folder.
    """
    if per_class < 1 or test_per_class < 1:
        raise ValueError(
            f"photo counts must be at least 1, got {per_class} train and {test_per_class} test"
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not an empty folder")
    for split, count in zip(SPLITS, (per_class, test_per_class), strict=True):
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = photo_rng(seed, split, shape, i)
                data, suffix = encode_photo(draw_photo(shape, rng), rng)
                with (folder / f"{shape}_{i:04d}{suffix}").open("wb") as file:
                    file.write(data)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to create (must not exist or be empty)")
    p.add_argument("--per-class", type=int, default=150, help="training photos per class")
    p.add_argument("--test-per-class", type=int, default=60, help="test photos per class")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        make_photo_folder(args.out, args.per_class, args.test_per_class, args.seed)
    except (ValueError, FileExistsError) as err:
        print(f"photo_folder.py: {err}", file=sys.stderr)
        return 2
    print(written(args.out, len(SHAPES), args.per_class, args.test_per_class))
    return 0


def written(out: Path, classes: int, per_class: int, test_per_class: int) -> str:
    """What a generator's command line says it wrote."""
    total = classes * (per_class + test_per_class)
    return (
        f"wrote {total} photos ({per_class} train + {test_per_class} test per class, "
        f"{classes} classes) to {out}"
    )


if __name__ == "__main__":
    sys.exit(main())
