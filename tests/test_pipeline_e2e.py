"""End to end: `dvc repro` of download + train on a tiny params file, in a temporary copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, needs_fashion_mnist
from tests.image_folder import CLASS_COLOURS, class_image, encode, make_image_folder
from tests.serving.conftest import (
    free_port,
    no_torch_dir,
    run_service,
    serve_argv,
    service_env,
    write_params,
)

TRACKED = ["dvc.yaml", "pipeline", "stages", "checksums", ".dvcignore", "images"]


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def project(tmp_path: Path, params: dict[str, Any]) -> Path:
    for name in TRACKED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    params["data"].update(max_train=600, max_test=200)
    params["train"].update(epochs=2, batch_size=64, threads=2)
    params["evaluate"].update(
        corruptions=["gaussian_noise", "rotation"], severities=[1, 3], shift_images=100
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], tmp_path)
    return tmp_path


@pytest.mark.slow
@needs_fashion_mnist
def test_dvc_repro_runs_then_reports_nothing_changed(project: Path) -> None:
    run(["dvc", "repro"], project)
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    assert metrics["epochs"] == 2 and 0.1 < metrics["best_val_accuracy"] <= 1.0
    assert (project / "models" / "model.pt").is_file()
    assert (project / "models" / "checkpoints" / "last.pt").is_file()
    assert (project / "dvclive" / "train" / "plots" / "metrics" / "val_ece.tsv").is_file()
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    assert meta["sizes"]["train"] + meta["sizes"]["val"] == 600
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    assert {"raw", "scaled"} == set(evaluation["test"])
    assert set(evaluation["ood"]) == {"digits", "noise", "inverted_test"}
    assert evaluation["ood_selection"]["chosen"] == serving_choice(project)
    assert set(evaluation["shift"]) == {"clean", "gaussian_noise", "rotation"}
    serving = json.loads((project / "models" / "calibration.json").read_text())
    assert serving["class_names"][0] == "T-shirt/top" and serving["temperature"] > 0

    again = run(["dvc", "repro"], project)
    assert "Data and pipelines are up to date" in again
    shown = run(["dvc", "metrics", "show", "--json"], project)
    assert "best_val_accuracy" in shown and "adaptive_ece" in shown
    rendered = run(["dvc", "plots", "show", "-o", str(project / "rendered")], project)
    assert (project / "rendered" / "index.html").is_file(), rendered
    html = (project / "rendered" / "index.html").read_text()
    assert "Reliability diagram" in html and "reliability.png" in html
    status = run(["dvc", "status"], project)
    assert "up to date" in status

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "train.epochs" in run(["dvc", "params", "diff"], project)
    changed = run(["dvc", "status"], project)
    assert "train" in changed and "download" not in changed.split("train")[0]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["small_cnn", "tv:resnet18"])
def test_dvc_repro_on_an_image_folder_then_the_service_names_its_classes(
    project: Path, tmp_path: Path, arch: str
) -> None:
    """A user's folder through download, train, evaluate and export, then the real service;
    with our own network and with a torchvision backbone (from scratch: no network here)."""
    make_image_folder(project / "images", per_class=24)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(
        dataset="folder",
        root="images",
        image_size=[16, 16],
        channels=3,
        on_error="skip",  # images/cat/broken.png
        workers=2,
        ood=["noise"],
        max_train=None,
        max_test=None,
    )
    params["model"].update(arch=arch, pretrained=False)
    params["train"].update(epochs=8, batch_size=8, lr=0.05, backbone_lr_scale=0.5)
    params["evaluate"].update(shift_images=None)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], project)
    assert not list((project / "data").glob(".decoding-*"))  # the scratch files are gone
    card = json.loads((project / "models" / "calibration.json").read_text())
    assert card["class_names"] == ["cat", "dog", "fox"] and card["image_shape"] == [16, 16, 3]
    assert card["resize"] == "resize_shorter_then_center_crop"
    assert (project / "models" / "model.onnx").is_file()
    export = json.loads((project / "metrics" / "export.json").read_text())
    assert export["accuracy_onnx"] >= 80  # chance is 33%: three colours are easy to learn

    # The folder is a dependency: one more image reruns the pipeline from the data stage.
    (project / "images" / "dog" / "extra.png").write_bytes(
        encode(class_image(CLASS_COLOURS["dog"], (20, 20), 5), "PNG")
    )
    assert "download" in run(["dvc", "status"], project)

    port = free_port()
    serve_params = write_params(tmp_path / "serve.yaml", port=port, workers=1)
    env = service_env(project / "models" / "model.onnx", serve_params, [no_torch_dir(tmp_path)])
    argv = serve_argv()
    photo = encode(class_image(CLASS_COLOURS["fox"], (150, 200), 77), "JPEG", quality=90)
    with run_service(argv, env, port, tmp_path / "service.log") as service:
        answer = httpx.post(
            f"{service.url}/classify", content=photo, headers={"Content-Type": "image/jpeg"}
        )
        metrics = httpx.get(f"{service.url}/metrics").text
    assert answer.status_code == 200, answer.text
    assert answer.json()["class_name"] == "fox"
    assert {c["class_name"] for c in answer.json()["top_k"]} == {"cat", "dog", "fox"}
    assert 'class_name="fox"' in metrics


def serving_choice(project: Path) -> str:
    """The OOD score the evaluate stage wrote for serving."""
    return json.loads((project / "models" / "calibration.json").read_text())["ood_score"]
