"""Turn what clients send into uint8 images, or refuse it with an :class:`InputError`.

Pillow only reads the header before the size check, so a decompression bomb (a small file that
declares a huge image) is refused before a single pixel is decoded. Everything here is NumPy and
Pillow: no BentoML, so the rules are testable without a server.
"""

from __future__ import annotations

import io
from http import HTTPStatus

import numpy as np
from PIL import Image

from pipeline.images import IMAGE_FORMATS, ImageReadError, read_image


class InputError(ValueError):
    """Input the service refuses: a message naming what arrived, a metric reason, a status.

    Args:
        message: What was wrong, for the client.
        reason: Short snake_case label for ``rankcal_rejected_requests_total``.
        status: HTTP status to answer with (a 4xx).
    """

    def __init__(
        self, message: str, *, reason: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


def decode_image(
    data: bytes, *, max_pixels: int, draft_for: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode an uploaded image into uint8 ``(H, W, C)`` with C = 1 (grey) or 3 (colour).

    :func:`pipeline.images.read_image` (the data stage's decoder: accepted formats, EXIF
    orientation, transparency onto black), with its refusals as :class:`InputError`.

    Args:
        data: The file's bytes (one of :data:`pipeline.images.IMAGE_FORMATS`).
        max_pixels: Largest ``width * height`` accepted, checked on the header before decoding.
        draft_for: The model's ``(height, width)``: a JPEG is decoded at the reduced scale the
            data stage decoded its images at (see :func:`pipeline.images.read_image`).

    Raises:
        InputError: For an empty body, bytes that are no image, a truncated or corrupt file, a
            zero-sized image or one over ``max_pixels``.
    """
    if not data:
        raise InputError(
            "the request body is empty: send the image file's bytes", reason="empty_body"
        )
    try:
        return read_image(data, max_pixels=max_pixels, draft_for=draft_for)
    except ImageReadError as err:
        hint = " (serve.max_image_pixels)" if err.reason == "too_many_pixels" else ""
        raise InputError(f"the body is refused: {err}{hint}", reason=err.reason) from None


# A fitted image travels from the guard to the endpoint as this prefix and its raw pixels: the
# guard handles every /classify body, so the endpoint never sees a client's bytes in this form.
_FITTED_PREFIX = b"\0rankcal-fitted\0"
# Images up to this many pixels decode in well under a millisecond or two: cheaper to decode on
# the event loop than to hand to a thread (about 0.1 ms per hop, more under load).
INLINE_PIXELS = 256 * 256


def fitted_bytes(pixels: np.ndarray) -> bytes:
    """An image already fitted to the model, as the body the endpoint reads back."""
    return _FITTED_PREFIX + np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()


def read_fitted(data: bytes, image_shape: tuple[int, int, int]) -> np.ndarray | None:
    """The pixels :func:`fitted_bytes` wrote, as uint8 of the model's ``(H, W, C)``; ``None``
    when ``data`` is not such a body (an image file, which the caller decodes)."""
    if not data.startswith(_FITTED_PREFIX):
        return None
    pixels = np.frombuffer(data, dtype=np.uint8, offset=len(_FITTED_PREFIX))
    if pixels.size != int(np.prod(image_shape)):
        raise InputError("the body is no image file", reason="not_an_image")
    return pixels.reshape(image_shape)


def is_small_image(data: bytes) -> bool:
    """Whether the header declares at most :data:`INLINE_PIXELS` pixels (``False`` when the
    header cannot be read: the full decode then says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
    except Exception:  # any decoder failure: see pipeline.images.read_image
        return False
    return width * height <= INLINE_PIXELS


def as_uint8_batch(
    images: np.ndarray, image_shape: tuple[int, int, int], *, max_items: int
) -> np.ndarray:
    """Validate an array of already-sized images and return it as uint8 ``(N, H, W, C)``.

    Accepted: ``(N, H, W)`` or ``(N, H, W, C)`` with C of 1 or 3 and ``(H, W)`` the model's;
    integers in 0..255 (pixel values) or floats in [0, 1] (scaled by 255 and rounded, so they go
    through exactly the uint8 preprocessing evaluation uses). Channels are converted to the
    model's by the caller.

    Args:
        images: The decoded request array.
        image_shape: The model's ``(H, W, C)``.
        max_items: Most images allowed in one request (``serve.max_batch_items``).

    Raises:
        InputError: On a wrong shape, too many images, a non-numeric dtype, NaN/Inf or values
            out of range.
    """
    height, width, _ = image_shape
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[1:3] != (height, width) or arr.shape[3] not in (1, 3):
        raise InputError(
            f"images must be (N, {height}, {width}) or (N, {height}, {width}, C) with C of 1 "
            f"or 3, got shape {tuple(np.shape(images))}",
            reason="bad_shape",
            status=HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    if arr.shape[0] == 0:
        raise InputError(
            "images holds no image", reason="bad_shape", status=HTTPStatus.UNPROCESSABLE_ENTITY
        )
    if arr.shape[0] > max_items:
        raise InputError(
            f"{arr.shape[0]} images in one request, more than the {max_items} allowed "
            "(serve.max_batch_items)",
            reason="too_many_items",
            status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise _out_of_range(f"integer pixels must be in 0..255, got {arr.min()}..{arr.max()}")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(
                f"images holds {np.count_nonzero(~np.isfinite(arr))} NaN or infinite value(s)",
                reason="non_finite",
                status=HTTPStatus.UNPROCESSABLE_ENTITY,
            )
        if arr.min() < 0 or arr.max() > 1:
            raise _out_of_range(f"float pixels must be in [0, 1], got {arr.min()}..{arr.max()}")
        return np.rint(arr * 255.0).astype(np.uint8)
    raise InputError(
        f"images must hold integers 0..255 or floats in [0, 1], got dtype {arr.dtype}",
        reason="bad_dtype",
        status=HTTPStatus.UNPROCESSABLE_ENTITY,
    )


def _out_of_range(message: str) -> InputError:
    return InputError(message, reason="out_of_range", status=HTTPStatus.UNPROCESSABLE_ENTITY)
