"""Seeded image corruptions: determinism, shapes, severity ordering, hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.data.corruptions import (
    CORRUPTIONS,
    FASHION_MNIST_SEVERITY_PARAMS,
    PARAM_RANGES,
    SEVERITY_PARAMS,
    contrast,
    corrupt,
    severity_table,
)

RANDOM = ("gaussian_noise", "rotation", "impulse_noise", "occlusion")
SHAPES = ((5, 28, 28, 1), (5, 32, 32, 3))


def structured_batch(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """Dark gradient background, a bright random rectangle and a disc, mild texture."""
    n, h, w, c = shape
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w]
    out = np.empty(shape, dtype=np.float64)
    for i in range(n):
        top, left = rng.integers(2, h // 3), rng.integers(2, w // 3)
        img = 30.0 + 40.0 * cols / w
        box = (rows >= top) & (rows < top + h // 2) & (cols >= left) & (cols < left + w // 3)
        img = np.where(box, 180.0, img)
        disc = (rows - 0.7 * h) ** 2 + (cols - 0.7 * w) ** 2 < (h / 6) ** 2
        img = np.where(disc, 200.0, img)
        out[i] = img[..., None] + rng.normal(0.0, 8.0, size=(h, w, c))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_and_dtype_are_kept_and_input_untouched(
    name: str, shape: tuple[int, int, int, int]
) -> None:
    images = structured_batch(shape)
    before = images.copy()
    for severity in range(1, 6):
        out = corrupt(images, name, severity, seed=0)
        assert out.shape == shape and out.dtype == np.uint8
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_seed_gives_identical_output(name: str) -> None:
    images = structured_batch((6, 28, 28, 1))
    np.testing.assert_array_equal(corrupt(images, name, 3, 7), corrupt(images, name, 3, 7))


@pytest.mark.parametrize("name", RANDOM)
def test_different_seed_gives_different_output(name: str) -> None:
    images = structured_batch((16, 32, 32, 3))
    assert not np.array_equal(corrupt(images, name, 3, 1), corrupt(images, name, 3, 2))


@pytest.mark.parametrize("table", ["default", "fashion_mnist"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_change_grows_with_severity(
    name: str, shape: tuple[int, int, int, int], table: str
) -> None:
    params = severity_table(table)
    images = structured_batch((64, *shape[1:]), seed=3)  # 64: block-alignment noise averages out
    clean = images.astype(np.float64)
    changes = [
        np.abs(corrupt(images, name, s, seed=11, table=params).astype(np.float64) - clean).mean()
        for s in range(1, 6)
    ]
    assert changes[0] > 0
    if name == "pixelate" and table == "fashion_mnist":
        # 8 then 7 blocks across 28 px: how much a synthetic image changes depends on where its
        # edges fall in the blocks, so only the ends are compared here; the block counts
        # themselves fall step by step (test_fashion_mnist_pixelate_and_occlusion_steps...).
        assert changes[-1] > changes[0], changes
        return
    assert all(a < b for a, b in itertools.pairwise(changes)), changes


def test_contrast_by_hand() -> None:
    images = np.array([0, 255], dtype=np.uint8).reshape(1, 1, 2, 1)
    rng = np.random.default_rng(0)
    # Severity 2 of the default table, c = 0.3: mean 0.5 on [0, 1]; 0 → 0.5 − 0.15 = 0.35 →
    # 89.25 → 89, 1 → 0.5 + 0.15 = 0.65 → 165.75 → 166.
    assert corrupt(images, "contrast", 2, 0).ravel().tolist() == [89, 166]
    # With c = 0.5: 0 → 0.25 → 63.75 → 64, 1 → 0.75 → 191.25 → 191.
    assert contrast(images, 0.5, rng).ravel().tolist() == [64, 191]
    table = {**SEVERITY_PARAMS, "contrast": (0.5,) * 5}
    assert corrupt(images, "contrast", 3, 0, table=table).ravel().tolist() == [64, 191]


def test_fashion_mnist_pixelate_and_occlusion_steps_in_whole_pixels() -> None:
    blocks = [round(28 / f) for f in FASHION_MNIST_SEVERITY_PARAMS["pixelate"]]
    assert blocks == [15, 12, 8, 7, 5]
    sides = [round(28 * s) for s in FASHION_MNIST_SEVERITY_PARAMS["occlusion"]]
    assert sides == [6, 10, 12, 15, 18]
    images = structured_batch((3, 28, 28, 1))
    table = severity_table("fashion_mnist")
    for severity, n in zip(range(1, 6), blocks, strict=True):
        out = corrupt(images, "pixelate", severity, 0, table=table)
        # n blocks per axis: at most n distinct values along a row of one image
        assert len(np.unique(out[0, 0, :, 0])) <= n


def test_each_dataset_gets_its_table() -> None:
    assert severity_table("fashion_mnist") is FASHION_MNIST_SEVERITY_PARAMS
    assert severity_table("cifar10") is SEVERITY_PARAMS  # CIFAR keeps CIFAR-C's values
    assert severity_table("folder") is SEVERITY_PARAMS
    # Fashion-MNIST's contrast at severity 1 keeps 82% of the contrast (CIFAR-C's: 40%).
    images = np.array([0, 255], dtype=np.uint8).reshape(1, 1, 2, 1)
    # 0.5 ± 0.5 · 0.82 → 0.09, 0.91 → 22.95 → 23, 232.05 → 232
    out = corrupt(images, "contrast", 1, 0, table=severity_table("fashion_mnist"))
    assert out.ravel().tolist() == [23, 232]


@pytest.mark.parametrize("table", [SEVERITY_PARAMS, FASHION_MNIST_SEVERITY_PARAMS])
def test_tables_grow_in_strength_inside_each_range(table: dict[str, tuple[float, ...]]) -> None:
    assert set(table) == set(CORRUPTIONS) == set(PARAM_RANGES)
    for name, values in table.items():
        mild, strong = PARAM_RANGES[name]
        strength = [(v - mild) / (strong - mild) for v in values]
        assert len(values) == 5
        assert all(a < b for a, b in itertools.pairwise(strength)), name
        if table is FASHION_MNIST_SEVERITY_PARAMS:  # fitted inside the searched range
            assert strength[0] > 0 and strength[-1] <= 1, name


def test_contrast_uses_each_image_and_channel_mean() -> None:
    images = np.zeros((2, 1, 2, 2), dtype=np.uint8)
    images[0, 0, :, 0] = [0, 255]  # image 0, channel 0 varies; channel 1 stays 0
    images[1, 0, :, 1] = [255, 255]  # constant channel: unchanged
    out = corrupt(images, "contrast", 2, seed=0)
    assert out[0, 0, :, 0].tolist() == [89, 166]
    assert out[0, 0, :, 1].tolist() == [0, 0]
    np.testing.assert_array_equal(out[1], images[1])


@pytest.mark.parametrize("shape", [(4, 28, 28, 1), (3, 32, 32, 3), (2, 20, 30, 2)])
@pytest.mark.parametrize("severity", range(1, 6))
def test_occlusion_zeroes_exactly_one_square(
    severity: int, shape: tuple[int, int, int, int]
) -> None:
    n, h, _, c = shape
    images = np.full(shape, 255, dtype=np.uint8)
    out = corrupt(images, "occlusion", severity, seed=5)
    side = round(SEVERITY_PARAMS["occlusion"][severity - 1] * h)
    assert (
        side
        == {28: (3, 6, 8, 11, 14), 32: (3, 6, 10, 13, 16), 20: (2, 4, 6, 8, 10)}[h][severity - 1]
    )
    for i in range(n):
        zero_rows, zero_cols, _ = np.nonzero(out[i] == 0)
        assert len(zero_rows) == side * side * c
        assert np.ptp(zero_rows) == side - 1 and np.ptp(zero_cols) == side - 1
    assert set(np.unique(out).tolist()) == {0, 255}


def test_brightness_and_pixelate_by_hand() -> None:
    images = np.array([[0, 100], [250, 30]], dtype=np.uint8).reshape(1, 2, 2, 1)
    # Severity 2 adds 0.2 on [0, 1] = 51 levels: 51, 151, 301 → clipped to 255, 81.
    assert corrupt(images, "brightness", 2, 0).ravel().tolist() == [51, 151, 255, 81]
    # 2×2 block mean: (0 + 100 + 250 + 30) / 4 = 95 everywhere.
    assert corrupt(images, "pixelate", 1, 0).ravel().tolist() == [95, 95, 95, 95]


def test_impulse_noise_sets_about_the_expected_fraction() -> None:
    images = np.full((50, 32, 32, 3), 128, dtype=np.uint8)
    out = corrupt(images, "impulse_noise", 5, seed=0)
    amount = SEVERITY_PARAMS["impulse_noise"][4]
    assert set(np.unique(out).tolist()) == {0, 128, 255}
    assert (out == 0).mean() == pytest.approx(amount / 2, rel=0.05)
    assert (out == 255).mean() == pytest.approx(amount / 2, rel=0.05)


def test_deterministic_corruptions_ignore_the_seed() -> None:
    images = structured_batch((4, 28, 28, 1))
    for name in ("gaussian_blur", "contrast", "brightness", "pixelate", "invert"):
        np.testing.assert_array_equal(corrupt(images, name, 4, 0), corrupt(images, name, 4, 99))


def test_invalid_name_lists_the_valid_ones() -> None:
    images = structured_batch((2, 28, 28, 1))
    with pytest.raises(ValueError, match=r"'fog'.*gaussian_noise.*occlusion"):
        corrupt(images, "fog", 1, 0)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True])
def test_invalid_severity_is_named(severity: object) -> None:
    images = structured_batch((2, 28, 28, 1))
    with pytest.raises(ValueError, match=f"severity.*got {severity!r}"):
        corrupt(images, "contrast", severity, 0)  # type: ignore[arg-type]


def test_invalid_images_are_named() -> None:
    images = structured_batch((2, 28, 28, 1))
    with pytest.raises(ValueError, match=r"uint8.*float32"):
        corrupt(images.astype(np.float32), "contrast", 1, 0)
    with pytest.raises(ValueError, match=r"\(n, H, W, C\).*\(2, 28, 28\)"):
        corrupt(images[..., 0], "contrast", 1, 0)
    with pytest.raises(ValueError, match=r"seed.*-3"):
        corrupt(images, "contrast", 1, -3)


def test_invert_by_hand() -> None:
    images = np.array([0, 100, 255], dtype=np.uint8).reshape(1, 1, 3, 1)
    # a = 0.2: 0.8 x + 0.2 (255 - x) -> 0 + 51, 80 + 31, 204 + 0; a = 1: the negative
    assert corrupt(images, "invert", 1, 0).ravel().tolist() == [51, 111, 204]
    assert corrupt(images, "invert", 5, 0).ravel().tolist() == [255, 155, 0]
