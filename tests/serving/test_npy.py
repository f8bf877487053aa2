"""The batch endpoint's ``.npy`` body reader: strict, copy-free, never unpickling."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from serving.images import InputError
from serving.npy import MAX_HEADER_BYTES, MEDIA_TYPE, npy_bytes, read_npy


def npy_pickled(array: np.ndarray) -> bytes:
    """An object array saved the way only ``allow_pickle=True`` allows (its data is a pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npy_version(array: np.ndarray, major: int) -> bytes:
    """``array`` written in .npy format version ``major``.0."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(major, 0))
    return buffer.getvalue()


def npy_header(header: str, payload: bytes = b"") -> bytes:
    """A version 1.0 .npy file with this literal header text, padded as np.save pads."""
    text = header.encode("latin1")
    pad = -(10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload


def npy_shape(array: np.ndarray, shape: str) -> bytes:
    """``array``'s bytes behind a header that declares ``shape`` (any Python text)."""
    descr = np.lib.format.dtype_to_descr(array.dtype)
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape}, }}"
    return npy_header(header, array.tobytes())


def test_a_saved_array_reads_back_equal_without_a_copy() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    body = npy_bytes(images)
    got = read_npy(body)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)
    assert not got.flags.writeable  # a view of the request's bytes
    assert np.shares_memory(got, np.frombuffer(body, np.uint8))


@pytest.mark.parametrize(
    "array",
    [
        np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4),
        np.arange(24, dtype=">u2").reshape(2, 3, 4),  # big-endian
        np.asfortranarray(np.arange(24, dtype=np.int64).reshape(2, 3, 4)),
        np.zeros((0, 3, 4), np.uint8),  # empty: the shape check refuses it later
        np.float64(3.5),  # 0-d: likewise
    ],
    ids=["float32", "big_endian", "fortran", "empty", "scalar"],
)
def test_every_plain_numeric_layout_reads_back_equal(array: np.ndarray) -> None:
    got = read_npy(npy_bytes(array))
    assert got.dtype == array.dtype
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_version_2_headers_are_read() -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(read_npy(npy_version(array, 2)), array)


def test_the_header_of_np_save_is_far_under_the_limit() -> None:
    body = npy_bytes(np.zeros((1024, 224, 224, 3), np.uint8))
    header_length = int.from_bytes(body[8:10], "little")
    assert header_length < MAX_HEADER_BYTES / 8


def _refusal(body: bytes) -> str:
    with pytest.raises(InputError) as caught:
        read_npy(body)
    assert caught.value.reason == "bad_npy"
    assert caught.value.status == 400
    return str(caught.value)


def test_pickled_objects_are_refused_without_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def trap(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickled a client's bytes")

    monkeypatch.setattr(pickle, "loads", trap)
    monkeypatch.setattr(pickle, "load", trap)
    assert "objects are never unpickled" in _refusal(npy_pickled(np.array([1, "a"], object)))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "magic"),
        (b"P6\n12 12\n255\n" + bytes(432), "magic"),
        (b'{"images": [[0]]}', "magic"),
        (npy_version(np.zeros(3, np.uint8), 3), "version 3.0"),
        (npy_bytes(np.zeros(3, [("a", "u1"), ("b", "f4")])), "not a plain number type"),
        (npy_bytes(np.array(["ab", "c"])), "<U2"),
        (npy_bytes(np.array([b"ab"])), "|S2"),
        (npy_bytes(np.zeros(2, bool)), "bool"),
        (npy_bytes(np.zeros(2, np.complex64)), "complex64"),
        (npy_bytes(np.zeros(2, "datetime64[s]")), "datetime64"),
        (npy_bytes(np.zeros((2, 3), np.uint8))[:-1], "declares 6 bytes"),
        (npy_bytes(np.zeros((2, 3), np.uint8)) + b"\0", "the body holds 7"),
        (npy_bytes(np.zeros((2, 3), np.uint8))[:9], "header"),
        (npy_shape(np.zeros(6, np.uint8), "(10**30, 2)"), "header"),
        (npy_shape(np.zeros(6, np.uint8), f"({2**62}, {2**62})"), "each under"),
        (npy_shape(np.zeros(6, np.uint8), f"({2**30}, {2**30})"), "declares"),
        (npy_shape(np.zeros(6, np.uint8), "(-2, -3)"), "negative"),
        (npy_shape(np.zeros(0, np.uint8), f"(0, {10**20})"), "each under 2147483648"),
        (npy_shape(np.zeros(0, np.uint8), "(0, 1, 1, 1, 1)"), "at most 4 axes"),
        (npy_shape(np.zeros(6, np.uint8), "__import__('os').getpid()"), "header"),
        (
            npy_header(
                "{'descr': '|u1', 'fortran_order': False, 'shape': (6,), 'x': " + "1" * 2000 + "}"
            ),
            "header",
        ),
    ],
    ids=[
        "empty",
        "ppm",
        "json",
        "version_3",
        "structured",
        "unicode",
        "bytes",
        "bool",
        "complex",
        "datetime",
        "truncated",
        "trailing",
        "cut_header",
        "literal_too_big",
        "shape_past_any_batch",
        "shape_overflows_memory",
        "negative_shape",
        "zero_and_huge_dimension",
        "five_axes",
        "code",
        "long_header",
    ],
)
def test_anything_else_is_refused_with_a_reason(body: bytes, words: str) -> None:
    assert words in _refusal(body)


def test_bentoml_still_picks_parsers_from_the_table_we_register_in() -> None:
    """serving.npy registers in BentoML's private ALL_SERDE table: an upgrade that moves it
    must fail here, not in production as a JSON parse of binary bodies."""
    from _bentoml_impl.serde import ALL_SERDE, JSONSerde
    from _bentoml_impl.server import app

    from serving import npy

    npy.register(field="images")
    assert issubclass(ALL_SERDE[MEDIA_TYPE], JSONSerde)
    assert "ALL_SERDE.get(media_type" in Path(app.__file__).read_text()
