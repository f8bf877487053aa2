"""Tests for the seeded stratified splits."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data import stratified_split, stratified_subset

LABELS = np.repeat(np.array([0, 1, 2]), [100, 50, 10])


def test_split_is_deterministic_per_seed() -> None:
    first = stratified_split(LABELS, 0.2, seed=1)
    again = stratified_split(LABELS, 0.2, seed=1)
    other = stratified_split(LABELS, 0.2, seed=2)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


def test_split_is_sorted_disjoint_and_covering() -> None:
    train, val = stratified_split(np.random.default_rng(0).permutation(LABELS), 0.3, seed=0)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(LABELS)))


def test_split_is_stratified() -> None:
    _, val = stratified_split(LABELS, 0.2, seed=0)
    assert np.bincount(LABELS[val]).tolist() == [20, 10, 2]


def test_small_classes_still_reach_both_sides() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2])
    train, val = stratified_split(labels, 0.01, seed=0)
    assert sorted(labels[val].tolist()) == [0, 1]
    assert set(labels[train].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=f"got {fraction}"):
        stratified_split(LABELS, fraction, seed=0)


def test_subset_has_exact_size_and_proportions() -> None:
    subset = stratified_subset(LABELS, 80, seed=0)
    assert len(subset) == 80 and subset.dtype == np.int64
    assert np.all(np.diff(subset) > 0)
    assert np.bincount(LABELS[subset]).tolist() == [50, 25, 5]


def test_subset_rounds_to_exact_size() -> None:
    subset = stratified_subset(LABELS, 7, seed=3)
    assert len(subset) == 7 and len(np.unique(subset)) == 7


def test_subset_is_deterministic_per_seed() -> None:
    np.testing.assert_array_equal(
        stratified_subset(LABELS, 40, seed=5), stratified_subset(LABELS, 40, seed=5)
    )
    assert not np.array_equal(
        stratified_subset(LABELS, 40, seed=5), stratified_subset(LABELS, 40, 6)
    )


def test_subset_larger_than_pool_keeps_everything() -> None:
    np.testing.assert_array_equal(stratified_subset(LABELS, 1000, seed=0), np.arange(len(LABELS)))


def test_subset_rejects_non_positive_size() -> None:
    with pytest.raises(ValueError, match="got 0"):
        stratified_subset(LABELS, 0, seed=0)
