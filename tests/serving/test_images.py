"""Decoding and validating what clients send (serving/images.py)."""

from __future__ import annotations

import io
import struct
import zlib
from http import HTTPStatus

import numpy as np
import pytest
from PIL import Image

from serving.images import InputError, as_uint8_batch, decode_image
from tests.serving.conftest import png_bytes

MAX_PIXELS = 10_000


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid 2x2 PNG whose IHDR chunk claims ``width`` x ``height`` (CRC fixed up)."""
    data = bytearray(png_bytes(np.zeros((2, 2), np.uint8)))
    # Signature (8 bytes), then IHDR: length (4), type (4), width (4), height (4), ..., CRC.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def refused(data: bytes, max_pixels: int = MAX_PIXELS) -> InputError:
    with pytest.raises(InputError) as info:
        decode_image(data, max_pixels=max_pixels)
    assert info.value.status == HTTPStatus.BAD_REQUEST
    return info.value


def test_grey_png_round_trips() -> None:
    image = np.arange(48, dtype=np.uint8).reshape(6, 8)
    out = decode_image(png_bytes(image), max_pixels=MAX_PIXELS)
    assert out.dtype == np.uint8
    assert out.shape == (6, 8, 1)
    np.testing.assert_array_equal(out[..., 0], image)


def test_rgb_png_keeps_three_channels() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(png_bytes(image), max_pixels=MAX_PIXELS), image)


def test_rgba_is_composited_onto_black() -> None:
    image = np.zeros((2, 2, 4), np.uint8)
    image[..., :3] = 200
    image[..., 3] = [[255, 0], [128, 255]]
    out = decode_image(png_bytes(image), max_pixels=MAX_PIXELS)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], [[200, 0], [100, 200]])  # 200 * 128 / 255 = 100.4


def test_grey_with_alpha_stays_grey() -> None:
    image = np.stack([np.full((2, 2), 100, np.uint8), np.full((2, 2), 255, np.uint8)], axis=-1)
    out = decode_image(png_bytes(image, mode="LA"), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(out, np.full((2, 2, 1), 100))


def test_palette_images() -> None:
    grey = Image.fromarray(np.array([[0, 255], [128, 64]], np.uint8)).convert("P")
    buffer = io.BytesIO()
    grey.save(buffer, "GIF", transparency=0)  # index 0 (black) transparent
    out = decode_image(buffer.getvalue(), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [128, 64]])
    colour = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)).convert("P")
    buffer = io.BytesIO()
    colour.save(buffer, "PNG")
    np.testing.assert_array_equal(
        decode_image(buffer.getvalue(), max_pixels=MAX_PIXELS), [[[255, 0, 0], [0, 0, 255]]]
    )


def test_sixteen_bit_grey_is_rescaled() -> None:
    image = np.array([[0, 65535], [257 * 100, 257 * 7]], np.uint16)
    out = decode_image(png_bytes(image), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [100, 7]])


def test_jpeg_decodes() -> None:
    image = np.full((8, 8, 3), 120, np.uint8)
    out = decode_image(png_bytes(image, fmt="JPEG"), max_pixels=MAX_PIXELS)
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - 120).max() <= 2


def test_empty_body() -> None:
    assert refused(b"").reason == "empty_body"


@pytest.mark.parametrize("data", [b"hello world", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"{}"])
def test_bytes_that_are_no_image(data: bytes) -> None:
    err = refused(data)
    assert err.reason == "not_an_image"
    assert f"{len(data)} bytes" in str(err)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt: str) -> None:
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    data = png_bytes(image, fmt=fmt)
    err = refused(data[: len(data) // 2])
    assert err.reason == "truncated_image"
    assert fmt in str(err)


def test_zero_sized_image() -> None:
    # Pillow refuses to identify a zero-width PNG, so it reads as "not an image".
    assert refused(png_with_header_size(0, 5)).reason in ("bad_shape", "not_an_image")


@pytest.mark.parametrize(
    "size",
    [
        (101, 100),  # just over MAX_PIXELS
        (60_000, 60_000),  # over Pillow's own hard limit: DecompressionBombError
        (12_000, 12_000),  # between Pillow's warning and hard limits
    ],
)
def test_declared_size_over_limit_is_refused_before_decoding(size: tuple[int, int]) -> None:
    # The file holds 2x2 pixels of data: only the header can have been read.
    err = refused(png_with_header_size(*size))
    assert err.reason == "too_many_pixels"


def test_real_large_image_over_limit() -> None:
    data = png_bytes(np.zeros((200, 200), np.uint8))  # 40k pixels, a few hundred bytes
    assert len(data) < 2000
    err = refused(data)
    assert err.reason == "too_many_pixels"
    assert "200x200" in str(err)
    assert decode_image(data, max_pixels=40_000).shape == (200, 200, 1)


SHAPE = (4, 5, 1)


def test_batch_of_uint8_images_passes_through() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 1), dtype=np.uint8)
    assert as_uint8_batch(images, SHAPE, max_items=3) is images


def test_batch_without_channel_axis_and_int_values() -> None:
    images = np.arange(40, dtype=np.int64).reshape(2, 4, 5)
    out = as_uint8_batch(images, SHAPE, max_items=8)
    assert out.dtype == np.uint8
    assert out.shape == (2, 4, 5, 1)
    np.testing.assert_array_equal(out[..., 0], images)


def test_float_batch_is_scaled_to_uint8() -> None:
    images = np.zeros((1, 4, 5, 3))
    images[0, 0, 0] = [1.0, 0.5, 0.2]
    out = as_uint8_batch(images, SHAPE, max_items=1)
    np.testing.assert_array_equal(out[0, 0, 0], [255, 128, 51])


@pytest.mark.parametrize(
    ("images", "reason", "status"),
    [
        (np.zeros((2, 4, 6)), "bad_shape", 422),
        (np.zeros((2, 5, 4, 1)), "bad_shape", 422),
        (np.zeros((2, 4, 5, 2)), "bad_shape", 422),
        (np.zeros((4, 5)), "bad_shape", 422),
        (np.zeros((0, 4, 5)), "bad_shape", 422),
        (np.array("not an array"), "bad_shape", 422),
        (np.zeros((9, 4, 5), np.uint8), "too_many_items", 413),
        (np.full((1, 4, 5), np.nan), "non_finite", 422),
        (np.full((1, 4, 5), np.inf), "non_finite", 422),
        (np.full((1, 4, 5), 1.5), "out_of_range", 422),
        (np.full((1, 4, 5), -1), "out_of_range", 422),
        (np.full((1, 4, 5), 256), "out_of_range", 422),
        (np.full((1, 4, 5), True), "bad_dtype", 422),
        (np.full((1, 4, 5), "7"), "bad_dtype", 422),
    ],
)
def test_bad_batches_are_refused(images: np.ndarray, reason: str, status: int) -> None:
    with pytest.raises(InputError) as info:
        as_uint8_batch(images, SHAPE, max_items=8)
    assert (info.value.reason, info.value.status) == (reason, status)
