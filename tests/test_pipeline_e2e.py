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

from pipeline.plots import write_offline_template
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

TRACKED = [
    "dvc.yaml",
    "pipeline",
    "stages",
    "checksums",
    ".dvcignore",
    ".gitignore",
    "images",
    "weights",
]
# What git does not track there: a clone has none of it (make setup writes weights/*.pth).
IGNORED = shutil.ignore_patterns("__pycache__", "*.pth")


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
            shutil.copytree(src, tmp_path / name, ignore=IGNORED)
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
    # The plot templates and the offline page, as in the checkout after make setup.
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    run(["dvc", "config", "plots.html_template", "plots-offline.html"], tmp_path)
    write_offline_template(tmp_path / ".dvc" / "plots-offline.html")
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], tmp_path)
    return tmp_path


@pytest.mark.slow
@needs_fashion_mnist
def test_dvc_repro_runs_then_reports_nothing_changed(project: Path) -> None:
    run(["dvc", "repro"], project)
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    assert metrics["epochs"] == 2 and 10 < metrics["best_val_accuracy"] <= 100  # percent
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
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project))
    files = shown[""]["data"]  # the workspace
    assert set(files) == {"metrics/train.json", "metrics/eval_summary.json"}  # not the detail
    assert "best_val_accuracy" in files["metrics/train.json"]["data"]
    assert "adaptive_ece" in files["metrics/eval_summary.json"]["data"]
    rendered = run(["dvc", "plots", "show", "-o", str(project / "rendered")], project)
    assert (project / "rendered" / "index.html").is_file(), rendered
    html = (project / "rendered" / "index.html").read_text()
    assert "Reliability diagram" in html and "reliability.png" in html
    # offline: Vega inline, nothing from a CDN; the legends name the series
    assert "cdn.jsdelivr" not in html and "window.vegaEmbed" in html
    assert "temperature-scaled" in html and "tickMinStep" in html
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
    if arch == "tv:resnet18":
        # Under CPU bf16 autocast (AVX512-BF16, AMX) this tiny ResNet-18 (8-image batches of
        # 16x16, so 1x1 feature maps in its last stage) gets gradients of 1e20 and more there
        # from the first step, and training stops with DivergedError naming bf16
        # (pipeline.training.MAX_SKIPPED_SHARE). The test checks the folder-to-service path in
        # fp32, which the error tells the user to use.
        params["train"]["bf16"] = False
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


def commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], project)


def experiment_metrics(shown: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(params.yaml, eval_summary.json) of every revision and experiment in `dvc exp show
    --json`'s output, wherever they sit in its nesting."""
    found = []
    if isinstance(shown, dict):
        data = shown.get("data")
        if isinstance(data, dict) and "metrics" in data and "params" in data:
            metrics = (data["metrics"] or {}).get("metrics/eval_summary.json", {}).get("data")
            params = (data["params"] or {}).get("params.yaml", {}).get("data")
            if metrics and params:
                found.append((params, metrics))
        values = shown.values()
    elif isinstance(shown, list):
        values = shown
    else:
        return found
    for value in values:
        found += experiment_metrics(value)
    return found


@pytest.mark.slow
@needs_fashion_mnist
def test_metrics_travel_with_commits_experiments_remote_and_artifacts(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What a DVC user does: compare metrics across commits and experiments, push to a remote,
    pull on a second clone that then needs no training, fetch the model as an artifact."""
    run(["dvc", "repro"], project)
    # The metrics, plot data and dvclive plots are committed with the run (not git-ignored).
    untracked = run(["git", "status", "--porcelain", "--untracked-files=all"], project)
    for path in ("metrics/eval_summary.json", "metrics/eval.json", "plots/eval/confusion.csv"):
        assert f"?? {path}" in untracked, untracked
    commit(project, "baseline")
    baseline = json.loads((project / "metrics" / "eval_summary.json").read_text())

    # dvc metrics diff reads the committed files of a revision (it showed "-" for them when
    # they were git-ignored).
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", "--all", "--json"], project))
    accuracy = diff["metrics/eval_summary.json"]["accuracy"]
    assert accuracy["old"] == accuracy["new"] == baseline["accuracy"]

    # An experiment carries its own metrics, beside the baseline's.
    run(["dvc", "exp", "run", "-S", "loss.name=ce", "-S", "train.epochs=1"], project)
    rows = experiment_metrics(json.loads(run(["dvc", "exp", "show", "--json"], project)))
    ce = [m for p, m in rows if p["loss"]["name"] == "ce" and p["train"]["epochs"] == 1]
    base = [m for p, m in rows if p["loss"]["name"] != "ce"]
    assert ce and base, rows
    assert all(0 < m["accuracy"] <= 100 and m["ece"] >= 0 for m in ce + base)
    assert base[0]["accuracy"] == baseline["accuracy"]
    run(["git", "checkout", "-q", "--", "."], project)  # the baseline back in the workspace
    run(["dvc", "checkout", "-q"], project)

    # A local-directory remote: push, then a second clone pulls and is up to date.
    remote = tmp_path_factory.mktemp("remote")
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], project)
    commit(project, "remote")
    run(["dvc", "push"], project)
    clone = tmp_path_factory.mktemp("clone") / "project"
    run(["git", "clone", "-q", str(project), str(clone)], project.parent)
    run(["dvc", "pull"], clone)
    assert "up to date" in run(["dvc", "status"], clone)
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], clone)
    assert (clone / "models" / "model.onnx").read_bytes() == (
        project / "models" / "model.onnx"
    ).read_bytes()

    # The exported model is a DVC artifact of the repository: a version is a git tag in the
    # model registry's format (what `gto register` writes), and `dvc artifacts get` fetches the
    # latest one from the remote.
    tag = ["tag", "-a", "-m", "first model", "rankcal-classifier@v0.1.0"]
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *tag], project)
    out = tmp_path_factory.mktemp("artifact") / "model.onnx"
    run(["dvc", "artifacts", "get", str(project), "rankcal-classifier", "-o", str(out)], clone)
    assert out.read_bytes() == (project / "models" / "model.onnx").read_bytes()
