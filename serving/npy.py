"""The batch endpoint's binary body: one NumPy ``.npy`` file (``application/x-npy``).

JSON costs the batch endpoint most of its time (parsing nested lists of numbers); a ``.npy``
body is the array's bytes behind a short header, read here without a copy. It is read strictly,
since it comes from clients: only format versions 1.0 and 2.0, a header of at most
:data:`MAX_HEADER_BYTES` parsed by NumPy's own reader (a Python literal, never code), plain
numeric dtypes (never objects, so nothing is unpickled, nor records or strings), and exactly the
bytes the header declares, no fewer and no trailing ones. What the values must be (shape, range,
NaN) is :func:`serving.images.as_uint8_batch`'s, as for JSON.

BentoML 1.4 picks a request parser (a "serde") by content type from its ``ALL_SERDE`` table and
falls back to JSON for types it does not know; :func:`register` adds this format there, so the
endpoint, its batching and its metrics stay BentoML's. The table is private to BentoML:
``tests/serving/test_npy.py`` fails if an upgrade moves it.
"""

from __future__ import annotations

import io
import math
from http import HTTPStatus
from typing import Any, TypeVar

import numpy as np

from serving.images import InputError

MEDIA_TYPE = "application/x-npy"
# np.save writes a header of a few dozen bytes for a plain array (NumPy's own reader allows
# 10,000); a larger one is no plain array.
MAX_HEADER_BYTES = 1024
_KINDS = {"u": "unsigned integer", "i": "integer", "f": "float"}
# (N, H, W) or (N, H, W, C); every axis of an accepted batch is far under 2**31.
MAX_DIMS = 4
MAX_DIMENSION = 2**31

T = TypeVar("T")


def _refuse(message: str) -> InputError:
    return InputError(
        f"the .npy body is refused: {message}",
        reason="bad_npy",
        status=HTTPStatus.BAD_REQUEST,
    )


def read_npy(data: bytes) -> np.ndarray:
    """The array in a ``.npy`` file's bytes, as a read-only view of ``data`` (no copy).

    Args:
        data: The request body.

    Raises:
        InputError: (reason ``bad_npy``) for anything but a version 1.0/2.0 ``.npy`` file of a
            plain integer or float array whose data is exactly as long as its header says.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
    except ValueError:
        raise _refuse("it does not start with the .npy magic string") from None
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        raise _refuse(f"format version {version[0]}.{version[1]}; send 1.0 or 2.0 (np.save)")
    try:
        shape, fortran_order, dtype = readers[version](stream, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, SyntaxError, TypeError, OverflowError) as err:
        raise _refuse(f"its header cannot be read ({err})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise _refuse(f"dtype {dtype} is not a plain number type (objects are never unpickled)")
    if dtype.kind not in _KINDS:
        raise _refuse(f"dtype {dtype}; send {', '.join(_KINDS.values())} pixels")
    if any(d < 0 for d in shape):
        raise _refuse(f"shape {shape} has a negative size")
    # Before any size arithmetic or reshape: NumPy refuses a dimension past 2**63 with a
    # ValueError (a zero elsewhere in the shape makes the byte count 0, so it would get that
    # far), and no image batch has more than four axes or an axis past 2**31.
    if len(shape) > MAX_DIMS or any(d >= MAX_DIMENSION for d in shape):
        raise _refuse(
            f"shape {shape}: an image batch has at most {MAX_DIMS} axes, each under {MAX_DIMENSION}"
        )
    offset = stream.tell()
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - offset != expected:
        raise _refuse(
            f"the header declares {expected} bytes of {dtype} {shape}, "
            f"the body holds {len(data) - offset}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    if fortran_order:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as a ``.npy`` file's bytes (what a client sends; used by the tests and bench)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def register(field: str) -> None:
    """Let BentoML's endpoints read ``application/x-npy`` bodies into the input ``field``.

    The response stays JSON: the serde is BentoML's JSON one with the request side replaced.
    """
    # Imported here: clients (serving/client.py) use this module without BentoML.
    from _bentoml_impl.serde import ALL_SERDE, JSONSerde
    from pydantic import ValidationError
    from pydantic_core import PydanticCustomError

    class NpySerde(JSONSerde):
        media_type = MEDIA_TYPE

        async def parse_request(self, request: Any, cls: type[T]) -> T:
            try:
                array = read_npy(await request.body())
            except InputError as err:
                # As a validation error of the field, like a refusal of the JSON body: BentoML
                # answers it 400 and the guard reads its type as the refusal's reason.
                error = PydanticCustomError(err.reason, "{message}", {"message": str(err)})
                raise ValidationError.from_exception_data(
                    cls.__name__, [{"type": error, "loc": (field,), "input": None}]
                ) from None
            return cls.model_validate({field: array})  # type: ignore[attr-defined]

    ALL_SERDE[MEDIA_TYPE] = NpySerde  # type: ignore[index]
