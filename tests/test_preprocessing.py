"""Tests for the shared numpy preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.preprocessing import (
    channel_stats,
    input_scaling,
    match_channels,
    resize_images,
    to_model_input,
)


def _nhwc(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)[None, :, :, None]


def test_to_model_input_values_and_layout() -> None:
    images = np.zeros((2, 3, 4, 2), dtype=np.uint8)
    images[0, 0, 0] = [255, 0]
    images[1, 2, 3] = [0, 255]
    out = to_model_input(images, mean=[0.5, 0.0], std=[0.25, 0.5])
    assert out.shape == (2, 2, 3, 4) and out.dtype == np.float32 and out.flags.c_contiguous
    assert out[0, 0, 0, 0] == pytest.approx(2.0)
    assert out[0, 1, 0, 0] == pytest.approx(0.0)
    assert out[1, 0, 2, 3] == pytest.approx(-2.0)
    assert out[1, 1, 2, 3] == pytest.approx(2.0)


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1)])
def test_to_model_input_requires_4d(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        to_model_input(np.zeros(shape, dtype=np.uint8), [0.5], [0.5])


def test_to_model_input_checks_stats_and_dtype() -> None:
    images = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="need 3 values"):
        to_model_input(images, [0.5], [0.5])
    with pytest.raises(ValueError, match="positive"):
        to_model_input(images, [0.5] * 3, [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="float32"):
        to_model_input(images.astype(np.float32), [0.5] * 3, [0.5] * 3)


def test_resize_constant_image_stays_constant() -> None:
    images = np.full((3, 8, 8, 3), 77, dtype=np.uint8)
    for size in [(28, 28), (5, 3), (32, 17)]:
        out = resize_images(images, size)
        assert out.shape == (3, *size, 3) and out.dtype == np.uint8
        assert np.all(out == 77)


def test_resize_upsamples_with_half_pixel_centres() -> None:
    out = resize_images(_nhwc([[0, 100], [100, 200]]), (4, 4))
    # Sample positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1) on each axis.
    expected = [
        [0, 25, 75, 100],
        [25, 50, 100, 125],
        [75, 100, 150, 175],
        [100, 125, 175, 200],
    ]
    np.testing.assert_array_equal(out[0, :, :, 0], expected)


def test_resize_downsamples_by_averaging_neighbours() -> None:
    images = _nhwc([[0, 10, 20, 30], [40, 50, 60, 70], [80, 90, 100, 110], [120, 130, 140, 150]])
    np.testing.assert_array_equal(resize_images(images, (2, 2))[0, :, :, 0], [[25, 45], [105, 125]])


def test_resize_identity_returns_input() -> None:
    images = np.zeros((1, 5, 5, 1), dtype=np.uint8)
    assert resize_images(images, (5, 5)) is images


def test_resize_matches_torch_bilinear() -> None:
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(0).integers(0, 256, size=(4, 7, 9, 3), dtype=np.uint8)
    for size in [(13, 5), (28, 28), (4, 4)]:
        reference = torch.nn.functional.interpolate(
            torch.from_numpy(images).permute(0, 3, 1, 2).double(),
            size=size,
            mode="bilinear",
            align_corners=False,
        )
        reference = reference.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
        diff = np.abs(resize_images(images, size).astype(float) - reference)
        assert diff.max() <= 1


def test_match_channels() -> None:
    grey = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    rgb = match_channels(grey, 3)
    assert rgb.shape == (1, 2, 2, 3)
    assert np.all(rgb == grey)
    assert match_channels(grey, 1) is grey
    colours = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]]], np.uint8)
    luma = match_channels(colours, 1)
    assert luma.shape == (1, 1, 4, 1) and luma.dtype == np.uint8
    assert luma[0, 0, :, 0].tolist() == [76, 150, 29, 255]


@pytest.mark.parametrize(("have", "want"), [(2, 3), (1, 2), (3, 4)])
def test_match_channels_rejects_other_counts(have: int, want: int) -> None:
    with pytest.raises(ValueError, match="channel"):
        match_channels(np.zeros((1, 2, 2, have), dtype=np.uint8), want)


def test_channel_stats_hand_computed() -> None:
    images = np.zeros((2, 1, 2, 2), dtype=np.uint8)
    images[0, 0, :, 0] = [0, 255]
    images[1, 0, :, 0] = [0, 255]
    images[..., 1] = 51
    mean, std = channel_stats(images)
    assert mean == pytest.approx([0.5, 0.2]) and std == pytest.approx([0.5, 0.0], abs=1e-7)


def test_channel_stats_across_chunks() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(9000, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    scaled = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(std, scaled.std(axis=0), rtol=1e-8)


def test_input_scaling_dataset_is_the_training_images_statistics() -> None:
    images = np.zeros((4, 2, 2, 3), dtype=np.uint8)
    images[:2] = 255  # two white, two black images: mean 0.5, std 0.5 per channel
    assert input_scaling("dataset", images) == ([0.5] * 3, [0.5] * 3)
    assert input_scaling("dataset", images, np.array([0, 1])) == ([1.0] * 3, [0.0] * 3)


def test_input_scaling_fixed_values_ignore_the_images_and_average_for_grey() -> None:
    rgb = np.full((2, 3, 3, 3), 7, dtype=np.uint8)
    assert input_scaling("imagenet", rgb) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert input_scaling("symmetric", rgb) == ([0.5] * 3, [0.5] * 3)
    mean, std = input_scaling("imagenet", rgb[..., :1])
    assert mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    # symmetric: 0 -> -1, 255 -> 1
    x = to_model_input(
        np.array([[[[0, 255, 0]]]], dtype=np.uint8), *input_scaling("symmetric", rgb)
    )
    assert x.ravel().tolist() == [-1.0, 1.0, -1.0]


def test_input_scaling_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown normalisation 'cifar'; choose one of dataset"):
        input_scaling("cifar", np.zeros((1, 2, 2, 3), dtype=np.uint8))
