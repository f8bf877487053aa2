"""Stage entry points: bad params stop with a named key; non-default datasets prepare offline."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch
import yaml

from pipeline.data import save_prepared
from pipeline.io import write_json
from pipeline.model_card import METADATA_KEY, ModelCard
from stages import download, preset
from stages import export as export_stage
from stages import train as train_stage
from tests.conftest import ROOT
from tests.data.conftest import write_raw_dataset
from tests.test_export import toy_pipeline


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_download_stage_prepares_cifar10_from_local_files(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    # Fashion-MNIST's checksum table must not be applied to another dataset's files.
    write_raw_dataset("cifar10", tmp_path / "raw", n_train=50, n_test=20)
    params["data"].update(dataset="cifar10", ood=["digits", "noise"], max_train=None)
    args = [
        "--params",
        str(write_params(tmp_path / "p.yaml", params)),
        "--raw",
        str(tmp_path / "raw"),
        "--out",
        str(tmp_path / "out"),
        "--checksums",
        str(ROOT / "checksums" / "fashion-mnist.sha256"),
    ]
    assert download.main(args) == 0
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["image_shape"] == [32, 32, 3] and meta["sizes"]["test"] == 20
    assert meta["sizes"]["ood"] == {"digits": 20, "noise": 20}  # OOD sets match the test size


def test_download_stage_without_data_or_network_says_how_to_get_it(
    tmp_path: Path,
    params: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(name: str, raw_dir: Path) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr("pipeline.data.download.torchvision_downloader", offline)
    args = [
        "--params",
        str(write_params(tmp_path / "p.yaml", params)),
        "--raw",
        str(tmp_path / "raw"),
        "--out",
        str(tmp_path / "out"),
        "--system-dir",
        str(tmp_path / "absent"),
    ]
    assert download.main(args) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "internet" in err
    assert not (tmp_path / "out").exists()


def test_bad_param_stops_the_stage_naming_key_and_value(
    tmp_path: Path, params: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    params["data"]["val_fraction"] = 2
    args = [
        "--params",
        str(write_params(tmp_path / "p.yaml", params)),
        "--out",
        str(tmp_path / "out"),
    ]
    assert download.main(args) == 2
    assert "data.val_fraction must be in (0, 1), got 2" in capsys.readouterr().err


def test_cifar10_preset_is_valid_and_sets_the_paper_recipe() -> None:
    args = preset.preset_args(str(ROOT / "presets" / "cifar10_resnet50.yaml"))
    pairs = dict(a.split("=", 1) for a in args if a != "-S")
    assert pairs["model.arch"] == '"resnet50"' and pairs["train.epochs"] == "200"
    assert pairs["train.milestones"] == "[80,120]" and pairs["loss.num_mixes"] == "3"
    assert pairs["loss.alpha"] == "2.0" and pairs["loss.margin"] == "2.0"
    assert pairs["train.lr"] == "0.1" and pairs["data.dataset"] == '"cifar10"'


@pytest.fixture(scope="module")
def evaluated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the download, train and evaluate stages leave behind, for the toy pipeline."""
    root = tmp_path_factory.mktemp("pipeline")
    toy = toy_pipeline(root / "checkpoints")
    save_prepared(toy.data, root / "prepared")
    shutil.copy(root / "checkpoints" / "best.pt", root / "model.pt")
    write_json(root / "calibration.json", toy.evaluation.serving)
    write_json(root / "eval.json", toy.evaluation.metrics)
    return root


def export_args(src: Path, out: Path) -> list[str]:
    return [
        *("--params", str(ROOT / "params.yaml"), "--data", str(src / "prepared")),
        *("--model", str(src / "model.pt"), "--calibration", str(src / "calibration.json")),
        *("--eval-metrics", str(src / "eval.json")),
        *("--out", str(out / "model.onnx"), "--metrics", str(out / "export.json")),
    ]


def shift_ece(src: Path, dest: Path, *, calibration: bool) -> Path:
    """A copy of ``src`` whose eval.json (and optionally calibration.json) ECE is 0.01 higher."""
    shutil.copytree(src, dest)
    metrics = json.loads((src / "eval.json").read_text())
    metrics["test"]["scaled"]["ece"] += 0.01
    write_json(dest / "eval.json", metrics)
    if calibration:
        reference = json.loads((src / "calibration.json").read_text())
        reference["test_ece"] = metrics["test"]["scaled"]["ece"]
        write_json(dest / "calibration.json", reference)
    return dest


def test_export_stage_writes_a_verified_model_and_its_figures(
    evaluated_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANKCAL_MODEL_VERSION", "v-test")
    assert export_stage.main(export_args(evaluated_dir, tmp_path)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.onnx"]
    figures = json.loads((tmp_path / "export.json").read_text())
    assert figures["ece_unit"] == "percent" and figures["ece_abs_diff"] <= 1e-4
    assert figures["model_version"] == "v-test" and figures["batch_sizes"] == [1, 64]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    card = ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert card.model_version == "v-test" and card.test_ece == figures["ece_evaluate"]


def test_export_stage_failing_verification_leaves_no_model(
    evaluated_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shift_ece(evaluated_dir, tmp_path / "src", calibration=True)
    out = tmp_path / "out"
    assert export_stage.main(export_args(src, out)) == 1
    err = capsys.readouterr().err
    assert "export: verification failed" in err and "ECE mismatch" in err
    assert list(out.iterdir()) == []  # no model.onnx, no temporary file, no metrics


def test_export_stage_refuses_inputs_of_different_evaluate_runs(
    evaluated_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shift_ece(evaluated_dir, tmp_path / "src", calibration=False)
    assert export_stage.main(export_args(src, tmp_path / "out")) == 2
    assert "come from different evaluate runs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_version_is_git_describe_plus_weight_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    digest = "9a129038"  # sha256(b"weights")[:8]
    monkeypatch.delenv("RANKCAL_MODEL_VERSION", raising=False)

    def described(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 0, stdout="v1.2-3-gabc1234-dirty\n")

    def no_git(*args: Any, **kwargs: Any) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(export_stage.subprocess, "run", described)
    assert export_stage.model_version(weights) == f"v1.2-3-gabc1234-dirty-{digest}"
    monkeypatch.setattr(export_stage.subprocess, "run", no_git)
    assert export_stage.model_version(weights) == f"unknown-{digest}"
    monkeypatch.setenv("RANKCAL_MODEL_VERSION", "release-7")
    assert export_stage.model_version(weights) == "release-7"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without")
def test_train_on_cuda_without_a_gpu_is_one_line_not_a_traceback(
    tmp_path: Path, params: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    params["train"]["device"] = "cuda"
    args = ["--params", str(write_params(tmp_path / "p.yaml", params))]
    args += ["--data", str(tmp_path / "absent"), "--live", str(tmp_path / "live")]
    assert train_stage.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: train.device is 'cuda' but torch sees no CUDA device")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "live").exists()  # stopped before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without")
def test_the_gpu_recipe_refuses_to_start_without_a_gpu_unless_forced(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(ROOT / "presets" / "cifar10_resnet50.yaml")
    monkeypatch.delenv("FORCE", raising=False)
    assert preset.main(["--require-gpu", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "set FORCE=1" in captured.err
    monkeypatch.setenv("FORCE", "1")
    assert preset.main(["--require-gpu", path]) == 0
    assert "-S model.arch=" in capsys.readouterr().out


def make_repro_cifar10(cwd: Path, fake_bin: Path, **tools: str) -> subprocess.CompletedProcess:
    """``make repro-cifar10`` in ``cwd`` (set-up skipped) with ``tools`` (name: shell body) as
    the only ``dvc``/``python`` on PATH."""
    fake_bin.mkdir()
    for name, body in tools.items():
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)
    return subprocess.run(
        ["make", "-s", "-o", "setup", "repro-cifar10", f"PATH={fake_bin}:/usr/bin:/bin"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_repro_cifar10_never_runs_dvc_without_the_presets_arguments(
    tmp_path: Path,
) -> None:
    """With the preset refused, the make target must fail before `dvc exp run`, which
    without arguments would run the default pipeline as an experiment."""
    result = make_repro_cifar10(
        ROOT,
        tmp_path / "bin",
        dvc=f'echo dvc "$@" >> {tmp_path / "dvc.log"}',
        python="echo 'preset: refused' >&2\nexit 2",
    )
    assert result.returncode != 0
    assert "preset: refused" in result.stderr
    assert not (tmp_path / "dvc.log").exists()


def test_make_repro_cifar10_puts_params_and_outputs_back_when_the_run_fails(
    tmp_path: Path,
) -> None:
    """Offline, `dvc exp run` fails after writing the preset into params.yaml and clearing the
    data stage's output: the target restores params.yaml and dvc.lock and checks the outputs
    out again, so the next `make repro` works."""
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(ROOT / "Makefile", work)
    (work / "params.yaml").write_text("mine: 1\n")
    (work / "dvc.lock").write_text("lock: 1\n")
    log = tmp_path / "dvc.log"
    result = make_repro_cifar10(
        work,
        tmp_path / "bin",
        dvc=f'echo dvc "$@" >> {log}\n'
        'if [ "$1" = exp ]; then echo "preset: 1" > params.yaml; echo "lock: 2" > dvc.lock;'
        " exit 1; fi",
        python="echo '-S model.arch=resnet50'",
    )
    assert result.returncode != 0
    assert "back as they were" in result.stderr
    assert (work / "params.yaml").read_text() == "mine: 1\n"
    assert (work / "dvc.lock").read_text() == "lock: 1\n"
    assert log.read_text().splitlines() == [
        "dvc exp run -S model.arch=resnet50",
        "dvc checkout --quiet",
    ]


def test_train_metrics_are_flat_and_in_percent() -> None:
    from pipeline.training import TrainResult

    history = [
        {"epoch": 1, "train_loss": 0.9, "val_accuracy": 0.5, "val_ece": 0.1},
        {"epoch": 2, "train_loss": 0.7, "val_accuracy": 0.625, "val_ece": 0.0125},
    ]
    result = TrainResult(0.75, 1, 2, 0, 12.5, history)  # best epoch 1 at 0.75 (made up)
    assert train_stage.train_metrics(result) == {
        "epochs": 2,
        "best_epoch": 1,
        "best_val_accuracy": 75.0,
        "val_accuracy": 62.5,
        "val_ece": 1.25,
        "train_loss": 0.7,
        "resumed_from_epoch": 0,
        "seconds": 12.5,
    }


def test_paper_regime_preset_sets_the_papers_recipe_and_its_stages_read_it() -> None:
    import yaml

    from pipeline.config import load_section, read_params
    from pipeline.study import study_runs

    path = ROOT / "presets" / "study_paper.yaml"
    params = read_params(path)
    sections = {s: load_section(params, s) for s in ("model", "loss", "train", "study")}
    model, loss, train, study = sections.values()
    assert model.arch == "wrn16_4" and study.augment == "crop_flip"
    # the paper's settings: lr 0.1, x0.1 at 40% and 60% of the epochs, w 0.1, alpha 2, m 2, N 3
    assert train.lr == 0.1 and train.schedule == "multistep" and train.lr_gamma == 0.1
    assert train.milestones == [round(0.4 * study.epochs), round(0.6 * study.epochs)]
    paper = study.paper
    assert (paper.weight, paper.alpha, paper.margin, paper.num_mixes) == (0.1, 2.0, 2.0, 3)
    assert paper.mrl_mask == "faithful" and paper.mixed_bn == "update" and train.grad_clip == 2.0
    runs = {r.name: r.loss for r in study_runs(loss, study)}
    assert runs["mndcg"].weight == 0.1 and runs["mndcg"].num_mixes == 3
    assert study.val_fraction * study.max_train == 2000  # validation images
    # the paper's settings and the two searched on validation (bench/pick_settings.py)
    assert list(runs) == ["ce", "mixup", "mrl", "mndcg", "mrl_bnfrozen", "mndcg_bnfrozen"]
    # a _bnfrozen row is its namesake with the mixed pass's BatchNorm update switched off
    for name in ("mrl", "mndcg"):
        frozen = runs[f"{name}_bnfrozen"]
        assert (runs[name].mixed_bn, frozen.mixed_bn) == ("update", "freeze")
        assert dataclasses.replace(frozen, mixed_bn="update") == runs[name]
    # Its DVC file runs every row and seed on that file and writes under study/paper only.
    stages = yaml.safe_load((ROOT / "study" / "paper" / "dvc.yaml").read_text())["stages"]
    assert stages.keys() == {"loss", "tuned", "table"}
    for stage in stages.values():
        assert "--params presets/study_paper.yaml" in stage["cmd"]
        assert "study/paper/rows" in stage["cmd"]
        assert list(stage["params"][0]) == ["presets/study_paper.yaml"]
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]]
        assert all(o.startswith("study/paper/") for o in outs)
    # The rows are the study's record: committed with git, not left to a machine's disk.
    for stage in (stages["loss"], stages["tuned"]):
        assert [next(iter(o)) for o in stage["outs"]] == [
            f"study/paper/rows/{stage['cmd'].split()[4]}-s${{item.seed}}.json"
        ]
    for rows in ("study/rows", "study/default/rows", "study/paper/rows"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{rows}/ce-s0.json"], cwd=ROOT)
        assert ignored.returncode == 1, f"{rows} is git-ignored"


def test_default_regime_preset_is_the_pipelines_params_with_a_study_in_its_regime() -> None:
    import yaml

    from pipeline.config import load_section, read_params
    from pipeline.study import study_runs

    preset = read_params(ROOT / "presets" / "study_default.yaml")
    params = read_params(ROOT / "params.yaml")
    # Everything the rows train and evaluate with is the pipeline's own.
    for section in params:
        if section != "study":
            assert preset[section] == params[section], section
    study = load_section(preset, "study")
    data, train = load_section(params, "data"), load_section(params, "train")
    assert study.max_train == data.max_train and study.val_fraction == data.val_fraction
    assert study.epochs == train.epochs and study.augment == train.augment
    # Its mndcg row (the paper's settings) trains what params.yaml's loss section trains.
    runs = {r.name: r.loss for r in study_runs(load_section(params, "loss"), study)}
    assert runs["mndcg"] == load_section(params, "loss")
    assert runs["mndcg_tuned"].weight == 1.0 and runs["mndcg_tuned"].num_mixes == 2
    frozen = runs["mndcg_bnfrozen"]  # the default's row, its mixed pass sparing BatchNorm
    assert frozen.mixed_bn == "freeze"
    assert dataclasses.replace(frozen, mixed_bn="update") == runs["mndcg"]
    stages = yaml.safe_load((ROOT / "study" / "default" / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        assert "--params presets/study_default.yaml" in stage["cmd"]
        assert list(stage["params"][0]) == ["presets/study_default.yaml"]
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]]
        assert all(o.startswith("study/default/") for o in outs)


def test_photos_regime_preset_is_the_photos_recipe_with_a_study_on_two_folders() -> None:
    import yaml

    from pipeline.config import load_section, read_params
    from pipeline.study import study_runs

    preset = read_params(ROOT / "presets" / "study_photos.yaml")
    photos = read_params(ROOT / "presets" / "photos.yaml")
    # Every row trains and evaluates what make repro-photos does; only the folder differs.
    for section in photos:
        if section not in ("study", "data"):
            assert preset[section] == photos[section], section
    assert {k: v for k, v in preset["data"].items() if k != "root"} == {
        k: v for k, v in photos["data"].items() if k != "root"
    }
    study = load_section(preset, "study")
    data, train = load_section(photos, "data"), load_section(photos, "train")
    assert study.val_fraction == data.val_fraction and study.max_train >= 600
    assert study.epochs == train.epochs and study.augment == train.augment == "photo"
    assert len(study.seeds) >= 3
    runs = {r.name: r.loss for r in study_runs(load_section(preset, "loss"), study)}
    assert list(runs) == ["ce", "ls", "mixup", "mrl", "mndcg", "mrl_tuned", "mndcg_tuned"]
    assert runs["mndcg"] == load_section(photos, "loss")  # the preset's own loss, paper settings
    # Each row runs on each generated folder (stages.study --root) and writes under its folder.
    dvc = yaml.safe_load((ROOT / "study" / "photos" / "dvc.yaml").read_text())
    stages = dvc["stages"]
    assert {"shapes", "garments"} <= stages.keys()
    assert "bench/photo_folder.py study/photos/data/shapes" in stages["shapes"]["cmd"]
    assert "bench/garment_folder.py study/photos/data/garments" in stages["garments"]["cmd"]
    for name in ("loss", "tuned"):
        stage = stages[name]
        assert stage["matrix"]["folder"] == "${folders}"
        assert "--root study/photos/data/${item.folder}" in stage["cmd"]
        assert "--rows study/photos/${item.folder}/rows" in stage["cmd"]
        assert "study/photos/data/${item.folder}" in stage["deps"]
        assert "weights/efficientnet_lite0.pth" in stage["deps"]
        assert list(stage["params"][0]) == ["presets/study_photos.yaml"]
    assert {"folders": ["shapes", "garments"]} in dvc["vars"]
    table = stages["table"]
    assert table["foreach"] == "${folders}" and "--out study/photos/${item}" in table["do"]["cmd"]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "study/photos/garments/rows/ce-s0.json"], cwd=ROOT
    )
    assert ignored.returncode == 1, "study/photos rows are git-ignored"


def test_a_stage_under_a_python_without_the_packages_says_what_to_do() -> None:
    """A fresh shell's `python` (here: ours without site-packages) lacks the project's packages:
    the stage stops with the activation step, not with `No module named 'PIL'`."""
    done = subprocess.run(
        [sys.executable, "-S", "-m", "stages.train"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "lacks the project's packages (PIL" in done.stderr
    assert "source .venv/bin/activate" in done.stderr and "Traceback" not in done.stderr
