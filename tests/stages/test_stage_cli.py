"""Stage entry points: bad params stop with a named key; non-default datasets prepare offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages import download, preset
from tests.conftest import ROOT
from tests.data.conftest import write_raw_dataset


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
