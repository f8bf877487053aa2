"""The ranking-hypothesis check (pipeline/ranking_check.py) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.ranking_check import check_ranking, mixed_copies, ranking_report


def test_report_by_hand() -> None:
    raw = np.array([0.9, 0.5])
    mixed = np.array([[0.8, 0.6], [0.95, 0.4]])
    relevance = np.array([[0.7, 0.6], [0.9, 1.0]])  # copy 1 of image 1: same-class partner
    report = ranking_report(raw, mixed, relevance)
    # pairs: 0.9 > 0.8 yes, 0.5 > 0.6 no, 0.9 > 0.95 no (the same-class copy is left out)
    assert report["pairs"] == 3
    assert report["raw_above_mixed"] == pytest.approx(100 / 3)
    # image 0: conf (0.9, 0.8, 0.95) vs relevance (1, 0.7, 0.9): 2 concordant, 1 discordant
    # pairs, tau 1/3; image 1: (0.5, 0.6) vs (1, 0.6): discordant, tau -1; mean -1/3
    assert report["kendall_tau"] == pytest.approx(-1 / 3)
    # pooled over mixed copies: confidences (0.8, 0.6, 0.95) and relevances (0.7, 0.6, 0.9)
    # rank alike
    assert report["spearman"] == pytest.approx(1.0)


def test_copies_mix_with_one_lambda_per_copy_and_score_relevance() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    labels = np.array([0, 0, 1, 2])
    copies, relevance = mixed_copies(x, labels, copies=2, alpha=2.0, seed=5)
    rng = np.random.default_rng(5)  # the same draws, by hand
    for n in range(2):
        lam = rng.beta(2.0, 2.0)
        partner = rng.permutation(4)
        np.testing.assert_allclose(copies[n], lam * x + (1 - lam) * x[partner], rtol=1e-6)
        same = labels[partner] == labels
        np.testing.assert_allclose(relevance[n], np.where(same, 1.0, max(lam, 1 - lam)))


def test_a_network_that_ranks_as_the_paper_wants_scores_full_marks() -> None:
    """Logits proportional to the (mixed) one-hot label: confidence grows with max(λ, 1 − λ),
    and the raw image (a pure one-hot) is the most confident."""
    labels = np.arange(200) % 5
    x = 8.0 * np.eye(5, dtype=np.float32)[labels]
    report = check_ranking(lambda a: a.astype(np.float64), x, labels, copies=4, seed=1)
    assert report["raw_above_mixed"] == pytest.approx(100.0)
    assert report["kendall_tau"] == pytest.approx(1.0)
    assert report["spearman"] == pytest.approx(1.0)
    assert (report["copies"], report["alpha"]) == (4, 2.0)
    # a network that answers the opposite (more confident the more it is mixed) scores -1
    flipped = check_ranking(lambda a: -a.astype(np.float64), x, labels, copies=4, seed=1)
    assert flipped["raw_above_mixed"] == pytest.approx(0.0)
    assert flipped["kendall_tau"] < 0
