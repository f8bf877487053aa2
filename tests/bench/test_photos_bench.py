"""bench/photos.py: the photo recipe through the four stages, its table and its targets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from pipeline.model_card import METADATA_KEY
from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "photos.py"
LITE0 = ROOT / "weights" / "efficientnet_lite0.pth"


def load_script(path: Path = SCRIPT) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_recipes_change_only_what_they_name(tmp_path: Path) -> None:
    bench = load_script()
    photos = bench.recipe_params("photos", tmp_path, seed=2)
    assert photos["data"]["root"] == str(tmp_path) and photos["data"]["seed"] == 2
    assert photos["train"]["seed"] == 2 and photos["model"]["weights"] is not None
    scratch = bench.recipe_params("lite0_scratch", tmp_path, seed=0)
    assert scratch["model"]["weights"] is None and scratch["model"]["normalize"] == "dataset"
    assert (
        not scratch["train"]["freeze_bn"] and scratch["model"]["arch"] == "timm:efficientnet_lite0"
    )
    assert bench.recipe_params("photos", tmp_path, seed=0, loss="ce")["loss"]["name"] == "ce"
    thawed = bench.recipe_params("photos", tmp_path, 0, None, ["train.freeze_bn=false"])
    assert thawed["train"]["freeze_bn"] is False
    with pytest.raises(ValueError, match="no such key"):
        bench.recipe_params("photos", tmp_path, 0, None, ["train.freeze=false"])
    small = bench.recipe_params("small_cnn_scratch", tmp_path, seed=1)
    assert small["model"]["arch"] == "small_cnn" and small["data"]["dataset"] == "folder"
    assert (small["train"]["epochs"], small["train"]["batch_size"]) == (30, 32)


def test_table_marks_targets_and_summarises_seeds() -> None:
    bench = load_script()
    row = {"recipe": "photos", "accuracy": 96.0, "ece_before_ts": 4.0, "temperature": 1.0}
    rows = [
        {**row, "seed": 0, "ece": 2.0, "seconds": 100.0},
        {**row, "seed": 1, "ece": 3.5, "seconds": 300.0, "accuracy": 98.0},
    ]
    text = bench.table(rows)
    assert "| photos | 0 | 96.00 | 4.00 | 2.00 | 1.000 | 100 | met |" in text
    assert "| photos | 1 | 98.00 | 4.00 | 3.50 | 1.000 | 300 | missed |" in text
    # mean ± sample std: accuracy 97 ± 1.41, ECE 2.75 ± 1.06, seconds 200 ± 141.42
    assert "| photos | 2 seeds | 97.00 ± 1.41 | 4.00 ± 0.00 | 2.75 ± 1.06 |" in text
    assert "200.00 ± 141.42 | 1 of 2 met |" in text


@pytest.mark.slow
@pytest.mark.skipif(not LITE0.is_file(), reason="make setup writes weights/efficientnet_lite0.pth")
def test_the_photo_recipe_runs_through_export_with_its_scaling_in_the_card(tmp_path: Path) -> None:
    bench = load_script()
    folder = tmp_path / "shapes"
    load_script(ROOT / "bench" / "photo_folder.py").make_photo_folder(
        folder, per_class=6, test_per_class=3
    )
    params = bench.recipe_params("photos", folder, seed=0)
    params["data"].update(image_size=[32, 32], ood=["noise"], val_fraction=0.25)
    params["train"].update(epochs=1, batch_size=8)
    params["evaluate"].update(corruptions=["contrast"], severities=[1], shift_images=None)
    row = bench.run_pipeline(params, tmp_path / "run")
    assert 0 <= row["accuracy"] <= 100 and row["seconds"] > 0 and row["temperature"] > 0
    card = json.loads(
        next(
            p.value
            for p in onnx.load(tmp_path / "run" / "model.onnx").metadata_props
            if p.key == METADATA_KEY
        )
    )
    assert card["normalize"] == "symmetric" and card["mean"] == [0.5, 0.5, 0.5]
    assert card["class_names"] == ["circle", "square", "star", "triangle"]
