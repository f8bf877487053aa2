"""Offline scoring, ``rankcal predict`` (serving/predict.py): the service's answers per file."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.predict import FIELDS, main, predict_files, summary
from serving.predictor import CPU, Predictor
from tests.serving.conftest import CLASS_NAMES, ExportedModel, png_bytes, quadrant_images


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Six quadrant PNGs (two in a subfolder), a broken PNG and a text file."""
    images, _ = quadrant_images(6, seed=21)
    root = tmp_path / "images"
    (root / "more").mkdir(parents=True)
    for i, image in enumerate(images):
        (root / ("more" if i >= 4 else "") / f"{i}.png").write_bytes(png_bytes(image))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image: left out")
    return root


def test_rows_are_the_predictors_answers_and_bad_files_keep_their_error(
    exported_model: ExportedModel, folder: Path
) -> None:
    rows = predict_files(exported_model.path, [folder], cpu_only=True, batch_size=4)
    names = [Path(r["file"]).name for r in rows]
    assert names == ["0.png", "1.png", "2.png", "3.png", "broken.png", "4.png", "5.png"]
    broken = rows[names.index("broken.png")]
    assert "not an image" in broken["error"] and "class_name" not in broken
    predictor = Predictor(exported_model.path, top_k=1, providers=[CPU])
    images, _ = quadrant_images(6, seed=21)
    out = predictor.predict(images, batch_size=8)
    scored = [r for r in rows if not r["error"]]
    for row, probs, ood in zip(scored, out.probabilities, out.is_ood, strict=True):
        np.testing.assert_allclose(row["probabilities"], probs, rtol=1e-6)
        assert row["class_name"] == CLASS_NAMES[int(np.argmax(probs))]
        assert row["is_ood"] == bool(ood)
    line = summary(rows)
    assert line.startswith("scored 6 of 7 files (1 could not be read)")
    mean = float(out.confidence.mean())
    assert f"mean calibrated confidence {mean:.1%}" in line


def test_the_command_writes_a_csv_and_says_what_it_did(
    exported_model: ExportedModel, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    single = folder / "0.png"
    # the installed console script, as a user runs it
    script = Path(sys.executable).parent / "rankcal"
    command = [str(script), "predict", str(exported_model.path), str(folder), str(single)]
    result = subprocess.run(
        [*command, "--out", str(out), "--cpu"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "scored 7 of 8 files (1 could not be read)" in result.stderr
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [*FIELDS, *(f"p_{name}" for name in CLASS_NAMES)]
    assert len(table) == 8
    for row in table:
        if row["error"]:
            assert row["class_name"] == "" and row[f"p_{CLASS_NAMES[0]}"] == ""
        else:
            total = sum(float(row[f"p_{name}"]) for name in CLASS_NAMES)
            assert total == pytest.approx(1.0, abs=1e-5)


def test_a_missing_model_or_input_is_one_line(
    exported_model: ExportedModel, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.csv"
    assert main([str(tmp_path / "absent.onnx"), str(folder), "--out", str(out)]) == 2
    assert "absent.onnx does not exist" in capsys.readouterr().err
    assert main([str(exported_model.path), str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    assert not out.exists()
