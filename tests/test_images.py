"""Image files to model-sized pixels (pipeline/images.py): formats, EXIF, resize policies."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from pipeline.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    fit_image,
    load_image,
    read_image,
)
from tests.image_folder import encode, rotated_jpeg

MAX_PIXELS = 1 << 20
CROP = "resize_shorter_then_center_crop"


def test_exif_orientation_is_applied() -> None:
    # Left half white, right half black, 24 high and 40 wide; stored rotated with EXIF 6.
    upright = np.zeros((24, 40, 3), np.uint8)
    upright[:, :20] = 255
    out = read_image(rotated_jpeg(upright), max_pixels=MAX_PIXELS)
    assert out.shape == (24, 40, 3)
    assert out[:, :16].mean() > 240 and out[:, 24:].mean() < 15


def test_a_large_jpeg_is_drafted_for_the_target_size() -> None:
    photo = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    data = encode(photo, "JPEG", quality=90)
    assert read_image(data, max_pixels=1 << 24).shape == (1200, 1600, 3)
    # Target 64x48: no side below 2 * 64 = 128, so libjpeg's 1/8 scale (150x200) is the pick.
    assert read_image(data, max_pixels=1 << 24, draft_for=(64, 48)).shape == (150, 200, 3)
    # PNG has no draft mode: full size whatever the target.
    png = encode(photo[:300, :400], "PNG")
    assert read_image(png, max_pixels=1 << 24, draft_for=(8, 8)).shape == (300, 400, 3)


def test_a_drafted_rotated_jpeg_is_still_upright() -> None:
    upright = np.zeros((480, 800, 3), np.uint8)
    upright[:, :400] = 255
    out = read_image(rotated_jpeg(upright), max_pixels=1 << 24, draft_for=(16, 16))
    assert out.shape == (60, 100, 3)
    assert out[:, :45].mean() > 240 and out[:, 55:].mean() < 15


def test_formats_outside_the_list_are_refused() -> None:
    pixels = np.full((8, 8, 3), 100, np.uint8)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
        assert read_image(encode(pixels, fmt), max_pixels=MAX_PIXELS).shape[:2] == (8, 8)
    for fmt in ("PPM", "TGA", "ICO"):  # Pillow decodes them, the service does not
        with pytest.raises(ImageReadError) as info:
            read_image(encode(pixels, fmt), max_pixels=MAX_PIXELS)
        assert info.value.reason == "not_an_image"


def test_image_extensions_follow_the_formats() -> None:
    assert {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".webp"} <= IMAGE_EXTENSIONS
    assert not {".txt", ".ppm", ".ico", ".json"} & IMAGE_EXTENSIONS


def test_stretch_resizes_to_the_exact_size() -> None:
    pixels = np.zeros((10, 40, 3), np.uint8)
    pixels[:, 20:] = 200
    out = fit_image(pixels, (8, 8), 3, "stretch")
    assert out.shape == (8, 8, 3)
    # The aspect ratio is not kept: the left half (black) still covers the left half.
    assert out[:, :3].max() == 0 and out[:, 5:].min() == 200


def test_center_crop_keeps_the_middle_of_the_longer_side() -> None:
    # 10 high, 30 wide: the centre 10x10 is kept, the outer thirds (white) are cut off.
    pixels = np.full((10, 30, 1), 255, np.uint8)
    pixels[:, 10:20] = 0
    out = fit_image(pixels, (5, 5), 1, CROP)
    assert out.shape == (5, 5, 1)
    # The filter's support reaches a little past the crop box, so the border columns are not
    # quite black (Pillow resamples the box from the whole image, as it should).
    np.testing.assert_array_equal(out[:, 1:4], 0)
    assert out.max() < 64


def test_shrinking_is_antialiased() -> None:
    # A 1-pixel checkerboard shrunk 8x: antialiasing averages it to mid-grey; plain bilinear
    # sampling without antialiasing would return 0s and 255s.
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[..., None]
    out = fit_image(board, (8, 8), 1, "stretch").astype(int)
    assert np.all(np.abs(out - 128) <= 2)


def test_channels_are_converted_after_resizing() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200  # luma 0.299 * 200 = 59.8
    assert fit_image(rgb, (4, 4), 1, CROP).tolist() == [[[60]] * 4] * 4
    grey = np.full((4, 4, 1), 77, np.uint8)
    np.testing.assert_array_equal(fit_image(grey, (2, 2), 3, CROP), 77)


def test_already_sized_images_pass_through_unchanged() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit_image(pixels, (6, 6), 3, CROP), pixels)


def test_load_image_is_read_then_fit() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    data = encode(pixels, "PNG")
    want = fit_image(read_image(data, max_pixels=MAX_PIXELS), (12, 16), 3, CROP)
    got = load_image(data, size=(12, 16), channels=3, policy=CROP, max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("pixels", "size", "policy", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), (2, 2), CROP, "expected uint8"),
        (np.zeros((4, 4, 3), np.float32), (2, 2), CROP, "expected uint8"),
        (np.zeros((4, 4, 3), np.uint8), (0, 2), CROP, "size must be positive"),
        (np.zeros((4, 4, 3), np.uint8), (2, 2), "squash", "resize policy"),
    ],
)
def test_bad_arguments_are_named(
    pixels: np.ndarray, size: tuple[int, int], policy: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit_image(pixels, size, 3, policy)


def test_a_decoder_raising_an_unusual_exception_is_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow's decoders raise TypeError, RuntimeError, NotImplementedError on some files.
    def explode(self: Image.Image) -> None:
        raise NotImplementedError("decoder not implemented")

    data = encode(np.zeros((4, 4, 3), np.uint8), "PNG")
    monkeypatch.setattr(Image.Image, "load", explode)
    with pytest.raises(ImageReadError) as info:
        read_image(data, max_pixels=MAX_PIXELS)
    assert info.value.reason == "truncated_image"


def test_transparency_composites_onto_black_exactly() -> None:
    # Every colour value under every alpha: round(c * a / 255), as a float computation gives.
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([colour, colour, colour, alpha], axis=-1).astype(np.uint8)
    out = read_image(encode(rgba, "PNG", "RGBA"), max_pixels=MAX_PIXELS)
    want = np.rint(colour * alpha / 255.0)
    np.testing.assert_array_equal(out[..., 0], want)
    grey = read_image(encode(rgba, "PNG", "LA"), max_pixels=MAX_PIXELS)
    assert grey.shape == (256, 256, 1)
    np.testing.assert_array_equal(grey[..., 0], want)


def _png_with_chunk_flipped(chunk: bytes, where: str) -> bytes:
    data = bytearray(encode(np.arange(64, dtype=np.uint8).reshape(8, 8), "PNG"))
    start = data.find(chunk)
    (length,) = struct.unpack(">I", data[start - 4 : start])
    data[start + 4 + length if where == "crc" else start + 6] ^= 0xFF
    return bytes(data)


def test_a_png_failing_its_crc_is_refused() -> None:
    # Pillow decodes it without a word (it reads no IDAT CRC); libpng refuses it.
    with pytest.raises(ImageReadError, match=r"IDAT.*CRC") as info:
        read_image(_png_with_chunk_flipped(b"IDAT", "crc"), max_pixels=MAX_PIXELS)
    assert info.value.reason == "truncated_image"
    with pytest.raises(ImageReadError, match="CRC"):
        read_image(_png_with_chunk_flipped(b"IDAT", "data"), max_pixels=MAX_PIXELS)


def test_bytes_after_the_end_of_an_image_are_accepted() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for fmt in ("PNG", "JPEG"):
        out = read_image(encode(grey, fmt) + b"trailing junk" * 10, max_pixels=MAX_PIXELS)
        assert out.shape[:2] == (8, 8)


@pytest.mark.parametrize(
    ("values", "mode", "expected"),
    [
        ([[0.0, 1.0], [0.5, 0.25]], "F", [[0, 255], [128, 64]]),  # fractions of white
        ([[0.0, 255.0], [128.0, 7.0]], "F", [[0, 255], [128, 7]]),  # 8-bit levels
        ([[0, 65535], [257 * 100, 257]], "I", [[0, 255], [100, 1]]),  # 16-bit levels
    ],
)
def test_wide_grey_images_are_scaled_by_their_range(
    values: list[list[float]], mode: str, expected: list[list[int]]
) -> None:
    dtype = np.float32 if mode == "F" else np.int32
    image = Image.fromarray(np.array(values, dtype=dtype), mode)
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    out = read_image(buffer.getvalue(), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(out[..., 0], expected)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([[-5.0, 300.0]], "out_of_range"),
        ([[np.nan, 1.0]], "non_finite"),
        ([[np.inf, 0]], "non_finite"),
    ],
)
def test_wide_grey_values_out_of_any_range_are_refused(
    values: list[list[float]], reason: str
) -> None:
    image = Image.fromarray(np.array(values, dtype=np.float32), "F")
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    with pytest.raises(ImageReadError) as info:
        read_image(buffer.getvalue(), max_pixels=MAX_PIXELS)
    assert info.value.reason == reason
