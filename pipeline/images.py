"""Image files to model-sized uint8 arrays: one definition for the data stage and the service.

A photo goes through :func:`read_image` (Pillow decode restricted to :data:`IMAGE_FORMATS`,
EXIF orientation, transparency composited onto black, grey or RGB) and then :func:`fit_image`
(Pillow's antialiased resize under a :data:`RESIZE_POLICIES` policy, then the channel
conversion of :mod:`pipeline.preprocessing`). The folder dataset prepares its images with these
two calls and the service answers with them, so a photo is preprocessed identically in
evaluation and in production. Pillow and NumPy only: the serving image has no torch, so
torchvision's transforms (which do the same on PIL images) are not an option here.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps

from pipeline.preprocessing import match_channels

# Pillow format names a request or a dataset file may use; every other decoder (~40 in Pillow,
# some of them rarely exercised: BLP, DDS, PSD, ...) is never reached. The multi-picture JPEG
# (MPO) many phone cameras write is opened by the JPEG entry.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
# File extensions Pillow registers for those formats (".jpg", ".jpeg", ".jfif", ".png", ...).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in (*IMAGE_FORMATS, "MPO")
)
RESIZE_POLICIES: tuple[str, ...] = ("resize_shorter_then_center_crop", "stretch")
# Bilinear as torchvision's Resize on PIL images; Pillow widens the filter support by the
# reduction factor, so shrinking a 4000-pixel photo to 64 pixels is antialiased.
_RESAMPLE = Image.Resampling.BILINEAR
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Decode a JPEG down to no less than this multiple of the target size (see read_image).
_REDUCING_GAP = 2
# Pillow modes holding one grey channel (optionally with alpha); everything else becomes RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


class ImageReadError(ValueError):
    """A file that is no readable image, or one refused by a limit.

    Args:
        message: What was wrong, naming what arrived.
        reason: Short snake_case label (``empty_body``, ``not_an_image``, ``too_many_pixels``,
            ``bad_shape``, ``truncated_image``), used by the service's refusal metric.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_image(
    data: bytes, *, max_pixels: int, draft_for: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode image bytes into uint8 ``(H, W, C)``, C = 1 (grey) or 3 (colour), upright.

    Grey modes (1, L, I, I;16, F and grey palettes) give one channel, all others three. The EXIF
    orientation is applied (``ImageOps.exif_transpose``): without it, phone photos arrive
    sideways. Transparency is composited onto black. Only the first frame of an animation is
    used. The pixel count is checked on the header, before a pixel is decoded.

    With ``draft_for``, a JPEG is decoded at a reduced scale (libjpeg's DCT scaling, 1/2 to
    1/8) that keeps both sides at least twice the larger side of that target size: the
    ``reducing_gap`` Pillow's own ``thumbnail`` uses. A 12-megapixel photo then decodes about
    6x faster, and the antialiased resize in :func:`fit_image` still has twice the pixels it
    needs. Both the data stage and the service pass the model's size, so both see the same
    pixels.

    Args:
        data: The file's bytes, in one of :data:`IMAGE_FORMATS`.
        max_pixels: Largest ``width * height`` accepted.
        draft_for: ``(height, width)`` the image will be fitted to, or ``None`` to decode at
            full size.

    Raises:
        ImageReadError: For empty bytes, bytes in no accepted format, a truncated or corrupt
            file (a PNG chunk failing its CRC included), a zero-sized image, one over
            ``max_pixels``, or a 32-bit grey image whose values fit no known scale.
    """
    if not data:
        raise ImageReadError("the image is empty (0 bytes)", reason="empty_body")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns below its hard limit; treat that as the error it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        message = f"image too large to decode ({err})"
        raise ImageReadError(message, reason="too_many_pixels") from None
    # Decoders raise many exception types on malformed input (UnidentifiedImageError, OSError,
    # SyntaxError, but also TypeError, RuntimeError, NotImplementedError...): all mean the same.
    except Exception:
        raise ImageReadError(
            f"{len(data)} bytes that are not an image in an accepted format "
            f"({', '.join(IMAGE_FORMATS)})",
            reason="not_an_image",
        ) from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageReadError(f"image is {width}x{height}: zero-sized", reason="bad_shape")
        if width * height > max_pixels:
            raise ImageReadError(
                f"image is {width}x{height} = {width * height} pixels, more than the "
                f"{max_pixels} allowed",
                reason="too_many_pixels",
            )
        if image.format == "PNG":
            _check_png_chunks(data)
        try:
            if draft_for is not None:
                # Square, so the request holds whichever way EXIF turns the image afterwards.
                side = _REDUCING_GAP * max(draft_for)
                image.draft(None, (side, side))
            image.load()
            upright = ImageOps.exif_transpose(image) or image
            return _to_array(upright)
        except ImageReadError:
            raise
        except Exception as err:  # as above: any decoder failure is a corrupt file
            raise ImageReadError(
                f"{image.format} image ({width}x{height}) is truncated or corrupt: {err}",
                reason="truncated_image",
            ) from None


def _check_png_chunks(data: bytes) -> None:
    """Refuse a PNG whose chunk checksums fail, as libpng does for its critical chunks.

    Pillow checks no CRC of the image data (IDAT), so a damaged file can decode to wrong
    pixels without a word. Chunks after IEND (trailing bytes some tools append) are not read:
    they are accepted, as every browser does.
    """
    offset = len(_PNG_SIGNATURE)
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        end = offset + 8 + length
        if end + 4 > len(data):
            return  # truncated: the decoder says so with the file's own words
        (stored,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[offset + 4 : end]) != stored:
            raise ImageReadError(
                f"PNG chunk {kind!r} at byte {offset} fails its CRC check: the file is corrupt",
                reason="truncated_image",
            )
        if kind == b"IEND":
            return
        offset = end + 4


def _to_array(image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 1 or 3) from a loaded Pillow image, alpha composited onto black."""
    grey = image.mode in _GREY_MODES or (image.mode in ("P", "PA") and _palette_is_grey(image))
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if image.mode.startswith("I;16"):
        # 16-bit grey (e.g. PNG): Pillow's convert("L") would clip, so rescale 0..65535.
        wide = np.asarray(image, dtype=np.float32)
        return np.rint(wide / 257.0).astype(np.uint8)[..., None]
    if image.mode in ("I", "F"):
        return _wide_grey(np.asarray(image), image.mode)
    if has_alpha:
        # Composited onto black by Pillow's masked paste: colour * alpha / 255, rounded, in C
        # and in uint8 (a float copy of a 4096x4096 RGBA image would take 256 MB and 1.6 s).
        with_alpha = image.convert("LA" if grey else "RGBA")
        out = Image.new("L" if grey else "RGB", image.size, 0)
        out.paste(with_alpha.convert(out.mode), mask=with_alpha.getchannel("A"))
        pixels = np.asarray(out, dtype=np.uint8)
    else:
        pixels = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.ascontiguousarray(pixels)


def _wide_grey(values: np.ndarray, mode: str) -> np.ndarray:
    """uint8 (H, W, 1) from a 32-bit integer (``I``) or float (``F``) grey image.

    Their scale is not in the file, and Pillow's ``convert("L")`` silently clips, so the scale is
    read off the values: floats within [0, 1] are fractions of white; values within 0..255 are
    8-bit levels; integers within 0..65535 are 16-bit levels. Anything else (negative, larger,
    NaN or infinite) is refused rather than guessed.
    """
    wide = values.astype(np.float64)
    if not np.all(np.isfinite(wide)):
        raise ImageReadError(f"{mode} image holds NaN or infinite values", reason="non_finite")
    low, high = float(wide.min()), float(wide.max())
    if mode == "F" and low >= 0 and high <= 1:
        scale = 255.0
    elif low >= 0 and high <= 255:
        scale = 1.0
    elif mode == "I" and low >= 0 and high <= 65535:
        scale = 1 / 257
    else:
        raise ImageReadError(
            f"{mode} image values span {low:g}..{high:g}: expected [0, 1] or 0..255"
            + (" or 0..65535" if mode == "I" else ""),
            reason="out_of_range",
        )
    return np.rint(wide * scale).astype(np.uint8)[..., None]


def _palette_is_grey(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    rgb = np.asarray(palette, dtype=np.int16).reshape(-1, 3)
    return bool(np.all(rgb == rgb[:, :1]))


def check_resize_policy(policy: str) -> None:
    """Raise ValueError unless ``policy`` is one of :data:`RESIZE_POLICIES`."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {list(RESIZE_POLICIES)}, got {policy!r}")


def fit_image(pixels: np.ndarray, size: tuple[int, int], channels: int, policy: str) -> np.ndarray:
    """Bring a uint8 ``(h, w, 1 or 3)`` image to ``(height, width, channels)``.

    ``resize_shorter_then_center_crop`` scales the image so it covers ``size`` and crops the
    centre (``ImageOps.fit``: the aspect ratio is kept, the borders of the longer side are
    lost); ``stretch`` resizes to ``size`` whatever the aspect ratio. Both use Pillow's
    antialiased bilinear filter. The channel conversion comes after the resize (cheaper on a
    large photo) and is :func:`pipeline.preprocessing.match_channels`: grey to RGB repeats,
    RGB to grey is ITU-R 601 luma.

    Args:
        pixels: The image, e.g. from :func:`read_image`.
        size: Target ``(height, width)``.
        channels: Target channels, 1 or 3.
        policy: One of :data:`RESIZE_POLICIES`.

    Returns:
        uint8 ``(height, width, channels)``.
    """
    check_resize_policy(policy)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 1 or 3), got {pixels.dtype} {pixels.shape}")
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    if pixels.shape[:2] != (height, width):
        image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        if policy == "stretch":
            image = image.resize((width, height), _RESAMPLE)
        else:
            image = ImageOps.fit(image, (width, height), method=_RESAMPLE)
        pixels = np.asarray(image, dtype=np.uint8).reshape(height, width, -1)
    return match_channels(pixels[None], channels)[0]


def load_image(
    data: bytes, *, size: tuple[int, int], channels: int, policy: str, max_pixels: int
) -> np.ndarray:
    """:func:`read_image` (drafting a JPEG for ``size``) then :func:`fit_image`: image bytes to
    model-sized uint8 pixels."""
    pixels = read_image(data, max_pixels=max_pixels, draft_for=size)
    return fit_image(pixels, size, channels, policy)
