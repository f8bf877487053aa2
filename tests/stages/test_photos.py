"""The photo-folder recipe: presets/photos.yaml, `make repro-photos`, and the train stage's
model.weights and model.normalize end to end on a tiny folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipeline.config import ConfigError, load_section, read_params
from pipeline.data import load_prepared
from stages import download, preset
from stages import train as train_stage
from tests.conftest import ROOT
from tests.image_folder import make_image_folder

PRESET = ROOT / "presets" / "photos.yaml"
LITE0 = ROOT / "weights" / "efficientnet_lite0.pth"


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_photos_preset_is_params_yaml_but_for_its_photos_keys() -> None:
    photos, params = read_params(PRESET), read_params(ROOT / "params.yaml")
    for section in params:
        load_section(photos, section)
    changed = {f"{s}.{k}" for s in params for k in params[s] if photos[s][k] != params[s][k]}
    text = PRESET.read_text()
    for key in changed:  # each differing key says why, on its line or the lines above
        section, name = key.split(".")
        lines = text.splitlines()
        line = next(i for i, row in enumerate(lines) if row.startswith(f"  {name}:"))
        context = "\n".join(lines[max(0, line - 4) : line + 1])
        assert "photos" in context, key
    assert photos["model"] == {
        "arch": "timm:efficientnet_lite0",
        "pretrained": False,
        "weights": "weights/efficientnet_lite0.pth",
        "normalize": "symmetric",
    }
    assert photos["train"]["freeze_bn"] and photos["train"]["augment"] == "photo"
    assert photos["data"]["dataset"] == "folder"


def test_preset_set_replaces_the_folder_and_refuses_what_is_no_folder(tmp_path: Path) -> None:
    args = preset.preset_args(str(PRESET), [f"data.root={tmp_path}"])
    assert f'data.root="{tmp_path}"' in args
    with pytest.raises(ConfigError, match=r"data\.root .*absent' is not a folder"):
        preset.preset_args(str(PRESET), [f"data.root={tmp_path / 'absent'}"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        preset.preset_args(str(PRESET), ["data.nope=1"])
    (tmp_path / "my photos").mkdir()
    with pytest.raises(ConfigError, match="white space"):
        preset.preset_args(str(PRESET), [f"data.root={tmp_path / 'my photos'}"])


def make_repro_photos(
    cwd: Path, fake_bin: Path, *args: str, **tools: str
) -> subprocess.CompletedProcess:
    fake_bin.mkdir()
    for name, body in tools.items():
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)
    return subprocess.run(
        ["make", "-s", "-o", "setup", "repro-photos", *args, f"PATH={fake_bin}:/usr/bin:/bin"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_repro_photos_needs_a_folder_and_passes_it_to_the_preset(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    tools = {
        "dvc": f'echo dvc "$@" >> {log}',
        "python": f'echo python "$@" >> {log}; echo "-S data.root=\\"/x\\""',
    }
    result = make_repro_photos(ROOT, tmp_path / "bin", **tools)
    assert result.returncode != 0 and "make repro-photos DATA=<folder" in result.stderr
    assert not log.exists()
    result = make_repro_photos(ROOT, tmp_path / "bin2", "DATA=/srv/photos", **tools)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "python -m stages.preset --set data.root=/srv/photos presets/photos.yaml",
        'dvc exp run -S data.root="/x"',
    ]


def tiny_photo_params(tmp_path: Path, **train: Any) -> dict[str, Any]:
    params = read_params(PRESET)
    params["data"].update(root=str(make_image_folder(tmp_path / "photos", per_class=6)))
    params["data"].update(image_size=[32, 32], ood=["noise"], val_fraction=0.3)
    params["train"].update(epochs=1, batch_size=8, **train)
    return params


def prepare(tmp_path: Path, params: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``params`` and run the download stage on them: (params file, prepared folder)."""
    path = write_params(tmp_path / "p.yaml", params)
    prepared = tmp_path / "prepared"
    args = ["--params", str(path), "--out", str(prepared), "--raw", str(tmp_path / "raw")]
    assert download.main(args) == 0
    return path, prepared


@pytest.mark.skipif(not LITE0.is_file(), reason="make setup writes weights/efficientnet_lite0.pth")
def test_train_stage_fine_tunes_the_packaged_backbone_with_its_scaling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tiny_photo_params(tmp_path)
    params["model"]["weights"] = str(LITE0)
    path, prepared = prepare(tmp_path, params)
    data = load_prepared(prepared)
    assert data.normalize == "symmetric" and data.mean == [0.5] * 3 and data.std == [0.5] * 3
    out = ["--checkpoints", str(tmp_path / "ck"), "--model", str(tmp_path / "model.pt")]
    out += ["--metrics", str(tmp_path / "train.json"), "--live", str(tmp_path / "live")]
    assert train_stage.main(["--params", str(path), "--data", str(prepared), *out]) == 0
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["meta"]["mean"] == [0.5] * 3
    # BatchNorm frozen: the running statistics are still the file's
    file = torch.load(LITE0, weights_only=True)
    assert torch.equal(ckpt["model"]["net.bn1.running_var"], file["_bn0.running_var"])
    assert not torch.equal(ckpt["model"]["net.conv_stem.weight"], file["_conv_stem.weight"])
    assert "outside weights/" not in capsys.readouterr().err  # DVC watches weights/
    assert json.loads((tmp_path / "train.json").read_text())["epochs"] == 1


def test_train_stage_refuses_weights_that_do_not_fit_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tiny_photo_params(tmp_path)
    params["model"].update(arch="timm:mobilenetv3_small_050", weights=str(tmp_path / "w.pt"))
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "w.pt")
    path, prepared = prepare(tmp_path, params)
    args = ["--params", str(path), "--data", str(prepared), "--live", str(tmp_path / "live")]
    args += ["--checkpoints", str(tmp_path / "ck"), "--model", str(tmp_path / "model.pt")]
    assert train_stage.main(args) == 2
    err = capsys.readouterr().err
    assert "train: model.weights: " in err and "does not fit timm:mobilenetv3_small_050" in err
    assert "Traceback" not in err and not (tmp_path / "model.pt").exists()
    assert f"model.weights {tmp_path / 'w.pt'} is outside weights/" in err


@pytest.mark.parametrize("name", ["photos.yaml", "cifar10_resnet50.yaml", "study_paper.yaml"])
def test_dvc_applies_a_presets_arguments_to_params_yaml_exactly(tmp_path: Path, name: str) -> None:
    """The arguments go through DVC's own override parser (Hydra's grammar, which refuses JSON
    objects) and leave params.yaml holding the preset, nulls and nested rows included."""
    from dvc.utils.hydra import apply_overrides

    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    args = preset.preset_args(str(ROOT / "presets" / name), [f"data.root={tmp_path}"])
    apply_overrides(target, [a for a in args if a != "-S"])
    expected = read_params(ROOT / "presets" / name)
    expected["data"]["root"] = str(tmp_path)
    assert read_params(target) == expected


def test_make_exp_checks_the_params_and_puts_params_yaml_back_when_the_run_fails(
    tmp_path: Path,
) -> None:
    """`make exp SET=...`: only the named keys go to DVC, and a failed run (here a fake dvc
    that rewrites params.yaml as DVC does, then fails) leaves params.yaml as it was."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    original = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    log = tmp_path / "calls.log"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    tools = {
        "dvc": f'echo dvc "$@" >> {log}; [ "$1" = exp ] || exit 0; '
        f"echo 'rewritten: true' > params.yaml; exit 3",
        "python": f'echo python "$@" >> {log}; exec {sys.executable} "$@"',
    }
    for name, body in tools.items():
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-s", "-o", "setup", "exp", *args, f"PATH={fake_bin}:/usr/bin:/bin"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = make()
    assert result.returncode != 0 and 'make exp SET="loss.name=ce' in result.stderr
    result = make("SET=train.epochs=0")  # refused before DVC runs
    assert result.returncode != 0 and "train.epochs must be >= 1, got 0" in result.stderr
    assert "dvc" not in log.read_text()
    result = make("SET=loss.name=ce train.epochs=3")
    assert result.returncode != 0 and "the run failed (3)" in result.stderr
    assert "params.yaml, dvc.lock and the default pipeline's outputs are back" in result.stderr
    calls = log.read_text().splitlines()
    assert 'dvc exp run -S loss.name="ce" -S train.epochs=3' in calls
    assert (tmp_path / "params.yaml").read_text() == original
