"""The serving OOD score and its threshold, chosen on validation and a synthetic set."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.ood_selection import CANDIDATES, choose_ood_score, score, synthetic_ood


def test_scores_by_hand() -> None:
    z = np.array([[0.0, math.log(3.0)], [2.0, 2.0]])
    # softmax of [0, ln 3] is [1/4, 3/4]; logsumexp is ln 4; two equal logits 2: ln(2 e^2)
    np.testing.assert_allclose(score("msp", z), [0.75, 0.5])
    np.testing.assert_allclose(score("energy", z), [math.log(4.0), 2.0 + math.log(2.0)])
    # -(1/4 ln 1/4 + 3/4 ln 3/4) and -ln 2, negated
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    np.testing.assert_allclose(score("entropy", z), [-h, -math.log(2.0)])
    with pytest.raises(ValueError, match="OOD score"):
        score("mahalanobis", z)


def images(n: int = 10, size: int = 8, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(20, 200, size=(n, size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize(("size", "channels"), [(8, 1), (28, 1), (10, 3)])
def test_shuffled_tiles_keep_each_images_pixels(size: int, channels: int) -> None:
    x = images(6, size, channels)
    out = synthetic_ood(x, seed=1)
    assert out.shape == x.shape and out.dtype == np.uint8
    for i in range(3):  # the first half: the same pixels, rearranged
        assert sorted(out[i].ravel()) == sorted(x[i].ravel())
    assert any(not np.array_equal(out[i], x[i]) for i in range(3))


def test_smooth_fields_span_the_images_range_and_are_smooth() -> None:
    x = images(40, 28, 1)
    fields = synthetic_ood(x, seed=2)[20:].astype(np.int64)
    assert fields.min() >= x.min() and fields.max() <= x.max()
    # neighbouring pixels of a 4x4 field upsampled to 28x28 differ little; of the inputs, a lot
    assert (
        np.abs(np.diff(fields, axis=2)).mean() < 0.2 * np.abs(np.diff(x.astype(int), axis=2)).mean()
    )


def test_synthetic_set_is_seeded() -> None:
    x = images(8)
    np.testing.assert_array_equal(synthetic_ood(x, seed=3), synthetic_ood(x, seed=3))
    assert not np.array_equal(synthetic_ood(x, seed=3), synthetic_ood(x, seed=4))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((1, 8, 8, 1), np.uint8), np.zeros((4, 8, 8, 1)), np.zeros((4, 3, 8, 1), np.uint8)],
)
def test_synthetic_set_refuses_what_it_cannot_tile(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        synthetic_ood(bad)


def test_the_candidate_that_separates_better_is_chosen_with_its_threshold() -> None:
    # ID rows: one large logit of varying size (msp and energy both high). OOD rows A: all
    # logits equal and large (msp minimal, energy high); energy cannot tell them from ID, msp can.
    rng = np.random.default_rng(0)
    top = rng.uniform(4.0, 8.0, size=200)
    id_logits = np.zeros((200, 4))
    id_logits[:, 0] = top
    ood_logits = np.full((200, 4), 6.0)
    choice = choose_ood_score(id_logits, ood_logits, tpr=0.95)
    assert choice.name == "msp"
    assert set(choice.candidates) == set(CANDIDATES)
    assert choice.candidates["msp"]["auroc"] > choice.candidates["energy"]["auroc"]
    msp = score("msp", id_logits)
    assert np.mean(msp >= choice.threshold) >= 0.95
    assert choice.threshold == np.sort(msp)[::-1][math.ceil(0.95 * 200) - 1]
    # OOD rows B: one large logit, like ID, but all logits shifted down (energy low, msp high)
    ood_logits = id_logits[::-1] - 10.0
    choice = choose_ood_score(id_logits, ood_logits, tpr=0.9)
    assert choice.name == "energy"
    assert np.mean(score("energy", id_logits) >= choice.threshold) >= 0.9


def test_a_tie_keeps_msp() -> None:
    z = np.eye(3)[np.arange(30) % 3] * 5.0
    same = choose_ood_score(z, z, tpr=0.95)  # both AUROC 50: the simpler score
    assert same.name == "msp"
