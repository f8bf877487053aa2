"""Seeded image corruptions: determinism, shapes, severity ordering, hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.data.corruptions import CORRUPTIONS, SEVERITY_PARAMS, contrast, corrupt

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


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_change_grows_with_severity(name: str, shape: tuple[int, int, int, int]) -> None:
    images = structured_batch((64, *shape[1:]), seed=3)  # 64: block-alignment noise averages out
    clean = images.astype(np.float64)
    changes = [
        np.abs(corrupt(images, name, s, seed=11).astype(np.float64) - clean).mean()
        for s in range(1, 6)
    ]
    assert changes[0] > 0
    assert all(a < b for a, b in itertools.pairwise(changes)), changes


def test_contrast_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.array([0, 255], dtype=np.uint8).reshape(1, 1, 2, 1)
    rng = np.random.default_rng(0)
    # Severity 2, c = 0.3: mean 0.5 on [0, 1]; 0 → 0.5 − 0.15 = 0.35 → 89.25 → 89,
    # 1 → 0.5 + 0.15 = 0.65 → 165.75 → 166.
    assert contrast(images, 2, rng).ravel().tolist() == [89, 166]
    # With c = 0.5: 0 → 0.25 → 63.75 → 64, 1 → 0.75 → 191.25 → 191.
    monkeypatch.setitem(SEVERITY_PARAMS, "contrast", (0.5,) * 5)
    assert contrast(images, 1, rng).ravel().tolist() == [64, 191]


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
