"""A user's image folder made on the fly: several classes of PNGs and JPEGs of different sizes
and modes, an EXIF-rotated JPEG, a corrupt file and a non-image file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# Each class is a colour a small network tells apart in a few steps, in colour or in grey.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "cat": (220, 40, 40),
    "dog": (40, 200, 60),
    "fox": (30, 60, 230),
}
MODES = ("RGB", "L", "RGBA", "P")
EXIF_ORIENTATION = 0x0112


def class_image(colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 image of ``colour`` with some noise and a dark square."""
    rng = np.random.default_rng(seed)
    height, width = size
    pixels = np.asarray(colour, dtype=np.float64) + rng.normal(0, 12, (height, width, 3))
    pixels[height // 3 : height // 2, width // 3 : width // 2] *= 0.5
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str, mode: str = "RGB", **save: object) -> bytes:
    """The bytes of ``pixels`` saved by Pillow as ``fmt`` after converting to ``mode``."""
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def rotated_jpeg(pixels: np.ndarray) -> bytes:
    """A JPEG storing ``pixels`` rotated 90° counter-clockwise, with EXIF orientation 6 (show
    rotated 90° clockwise): a viewer that applies EXIF shows ``pixels`` upright."""
    stored = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def make_image_folder(root: Path, per_class: int = 8, *, broken: bool = True) -> Path:
    """Write ``root/<class>/<images>`` for :data:`CLASS_COLOURS` and return ``root``.

    Images cycle through PNG and JPEG, the modes of :data:`MODES` and sizes from 20x20 to
    48x36. The first class also gets an EXIF-rotated JPEG (``rotated.jpg``) and a nested
    sub-folder; with ``broken``, ``cat/broken.png`` is a truncated PNG and ``dog/notes.txt`` a
    text file (ignored by extension).
    """
    sizes = [(20, 20), (36, 48), (48, 36), (24, 30)]
    for k, (name, colour) in enumerate(CLASS_COLOURS.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = class_image(colour, sizes[i % len(sizes)], seed=100 * k + i)
            mode = MODES[i % len(MODES)]
            if i % 2 == 0 or mode in ("RGBA", "P"):
                (folder / f"{name}_{i:02d}.png").write_bytes(encode(pixels, "PNG", mode))
            else:
                data = encode(pixels, "JPEG", mode, quality=95)
                (folder / f"{name}_{i:02d}.jpg").write_bytes(data)
    nested = root / "cat" / "more"
    nested.mkdir(exist_ok=True)
    (nested / "cat_nested.png").write_bytes(
        encode(class_image(CLASS_COLOURS["cat"], (30, 30), 999), "PNG")
    )
    (root / "cat" / "rotated.jpg").write_bytes(
        rotated_jpeg(class_image(CLASS_COLOURS["cat"], (24, 40), 998))
    )
    if broken:
        whole = encode(class_image(CLASS_COLOURS["cat"], (32, 32), 997), "PNG")
        (root / "cat" / "broken.png").write_bytes(whole[: len(whole) // 2])
        (root / "dog" / "notes.txt").write_text("not an image\n")
    return root
