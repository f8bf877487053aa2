"""bench/fit_severities.py: bisection and table fitting on losses computed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import fit_severities


def test_bisection_finds_the_strength_of_a_linear_loss() -> None:
    u, loss = fit_severities.bisect_strength(lambda u: 100 * u, 22.0, steps=12)
    assert u == pytest.approx(0.22, abs=2**-12) and loss == pytest.approx(22.0, abs=100 * 2**-12)


def test_bisection_stops_at_the_ends() -> None:
    # Never reaching the target: the strongest setting. Already past it at u = 0: the mildest.
    assert fit_severities.bisect_strength(lambda u: 10 * u, 50.0, steps=8) == (1.0, 10.0)
    assert fit_severities.bisect_strength(lambda u: 60 + u, 50.0, steps=8) == (0.0, 60.0)


def test_parameter_runs_from_the_mild_to_the_strong_end() -> None:
    assert fit_severities.parameter("contrast", 0.0) == 1.0  # c = 1: unchanged
    assert fit_severities.parameter("contrast", 0.25) == 0.75
    assert fit_severities.parameter("rotation", 0.5) == 90.0


def test_fit_table_hits_targets_of_a_hand_made_loss() -> None:
    # Black images; "accuracy" falls by 100 points per unit of brightness added, so the loss of
    # brightness b is 100 b (in steps of 1/255 of a pixel value): targets 5..50 → b = 0.05..0.5.
    images = np.zeros((2, 4, 4, 1), dtype=np.uint8)

    def accuracy_of(batch: np.ndarray) -> float:
        return 100.0 - 100.0 * float(batch.mean()) / 255.0

    targets = (5.0, 12.0, 22.0, 35.0, 50.0)
    table, reached = fit_severities.fit_table(accuracy_of, images, ["brightness"], targets, 14)
    assert table["brightness"] == pytest.approx([0.05, 0.12, 0.22, 0.35, 0.5], abs=0.003)
    # within one pixel-value step, 100 / 255 = 0.39 points
    assert reached["brightness"] == pytest.approx(list(targets), abs=100 / 255)


def test_missing_models_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fit_severities.main(["--models", str(tmp_path / "ce.pt")]) == 2
    assert "run `make study`" in capsys.readouterr().err
