"""Strict parsing of params.yaml into typed config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    LossConfig,
    TrainConfig,
    env_overrides,
    load_section,
    params_schema,
    parse_dataclass,
    read_params,
)
from tests.conftest import PAPER_SETTINGS, ROOT

PARAMS = Path(__file__).parents[1] / "params.yaml"


@pytest.fixture
def params() -> dict[str, Any]:
    return read_params(PARAMS)


def test_shipped_params_parse(params: dict[str, Any]) -> None:
    loss = load_section(params, "loss")
    assert isinstance(loss, LossConfig) and loss.name == "mndcg" and loss.copies == 3
    assert isinstance(load_section(params, "train"), TrainConfig)
    load_section(params, "data")
    load_section(params, "model")
    load_section(params, "evaluate")


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("loss", "margin", -1.0, "loss.margin must be >= 0, got -1.0"),
        ("loss", "num_mixes", 0, "loss.num_mixes must be >= 1, got 0"),
        ("loss", "name", "rank", "loss.name must be one of"),
        ("loss", "mixing", "cutout", "loss.mixing must be one of"),
        ("train", "epochs", "ten", "train.epochs must be of type int, got 'ten'"),
        ("train", "nesterov", 1, "train.nesterov must be of type bool, got 1"),
        ("train", "lr", True, "train.lr must be of type float, got True"),
        ("train", "milestones", [5, 2], "train.milestones must be increasing"),
        ("data", "val_fraction", 1.5, "data.val_fraction must be in (0, 1), got 1.5"),
        ("data", "ood", ["imagenet"], "data.ood must be one of"),
        ("evaluate", "reference_edges", [0.0, 0.5, 0.4, 1.0], "strictly increasing"),
        ("evaluate", "reference_edges", [0.1, 1.0], "must run from 0 to 1"),
        ("serve", "min_predictions", 0, "serve.min_predictions must be in 1..serve.window"),
        ("serve", "min_predictions", 501, "a window never holds more, got 501"),
    ],
)
def test_bad_values_name_key_and_value(
    params: dict[str, Any], section: str, key: str, value: Any, message: str
) -> None:
    bad = copy.deepcopy(params)
    bad[section][key] = value
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        load_section(bad, section)


def test_unknown_and_missing_keys(params: dict[str, Any]) -> None:
    bad = copy.deepcopy(params)
    bad["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['train.learning_rate'\]"):
        load_section(bad, "train")
    del bad["train"]["learning_rate"], bad["train"]["lr"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['train.lr'\]"):
        load_section(bad, "train")


def test_exponent_without_a_dot_is_a_number(params: dict[str, Any], tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string; the params mean a number."""
    text = (ROOT / "params.yaml").read_text().replace("  lr: 0.05\n", "  lr: 1e-3\n", 1)
    assert "lr: 1e-3" in text
    (tmp_path / "params.yaml").write_text(text)
    raw = read_params(tmp_path / "params.yaml")
    assert raw["train"]["lr"] == "1e-3"  # what the YAML parser gives
    assert load_section(raw, "train").lr == 0.001
    bad = copy.deepcopy(params)
    bad["train"]["lr"] = "fast"
    with pytest.raises(ConfigError, match=r"train\.lr must be of type float, got 'fast'"):
        load_section(bad, "train")


def test_int_accepted_for_float(params: dict[str, Any]) -> None:
    ok = copy.deepcopy(params)
    ok["loss"]["margin"] = 1
    assert load_section(ok, "loss").margin == 1.0


def test_unknown_section_rejected(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"trian": {}}))
    with pytest.raises(ConfigError, match="unknown params section"):
        read_params(path)


def test_copies_per_loss(params: dict[str, Any]) -> None:
    for name, copies in [("ce", 0), ("mixup", 1), ("mrl", 1), ("mndcg", 3)]:
        changed = copy.deepcopy(params)
        changed["loss"]["name"] = name
        assert load_section(changed, "loss").copies == copies


def test_name_registries_are_the_implementing_modules(params: dict[str, Any]) -> None:
    """One definition of each registry: the config's error lists what the library defines."""
    from pipeline.data.corruptions import CORRUPTIONS
    from pipeline.data.ood import OOD_NAMES
    from pipeline.data.readers import ID_DATASETS

    for section, key, value, names in [
        ("evaluate", "corruptions", ["fog"], CORRUPTIONS),
        ("data", "dataset", "imagenet", (*ID_DATASETS, "folder")),
        ("data", "ood", ["places"], OOD_NAMES),
    ]:
        changed = copy.deepcopy(params)
        changed[section][key] = value
        with pytest.raises(ConfigError) as info:
            load_section(changed, section)
        assert all(repr(name) in str(info.value) for name in names), str(info.value)


def test_model_arch_accepts_backbones_and_names_the_forms(params: dict[str, Any]) -> None:
    for arch in ("small_cnn", "tv:resnet18", "timm:resnet18"):
        params["model"]["arch"] = arch
        assert load_section(params, "model").arch == arch
    params["model"]["arch"] = "tv:resnet_18"
    with pytest.raises(ConfigError, match=r"model\.arch.*tv:resnet_18"):
        load_section(params, "model")
    params["model"].update(arch="small_cnn", pretrained=True)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        load_section(params, "model")


def test_tuned_study_rows_parse_and_name_nested_keys(params: dict[str, Any]) -> None:
    row = {
        "name": "mrl_tuned",
        "loss": "mrl",
        "weight": 1,
        "margin": 1.0,
        "alpha": 2.0,
        "num_mixes": 1,
        "mrl_mask": "per_sample",
        "mixed_bn": "freeze",
    }
    params["study"]["tuned"] = [row]
    study = load_section(params, "study")
    assert study.tuned[0].weight == 1.0 and study.tuned[0].mrl_mask == "per_sample"
    assert study.tuned[0].mixed_bn == "freeze"
    params["study"]["tuned"] = [{**row, "wieght": 1.0}]
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['study.tuned\[0\].wieght'\]"):
        load_section(params, "study")


def test_study_paper_settings_parse_and_name_their_keys(params: dict[str, Any]) -> None:
    assert params["study"]["paper"] == PAPER_SETTINGS  # params.yaml's
    paper = dict(PAPER_SETTINGS)
    params["study"]["paper"] = paper
    assert load_section(params, "study").paper.num_mixes == 3
    params["study"]["paper"] = {**paper, "num_mixes": 0}
    with pytest.raises(ConfigError, match=r"study\.paper\.num_mixes"):
        load_section(params, "study")
    params["study"]["paper"] = {**paper, "name": "mrl"}  # the row names the objective
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['study.paper.name'\]"):
        load_section(params, "study")
    del params["study"]["paper"]
    with pytest.raises(ConfigError, match=r"study\.paper"):
        load_section(params, "study")
    # A tuned row's range errors still name it as one.
    params["study"]["paper"] = paper
    params["study"]["tuned"] = [{**paper, "name": "t", "loss": "mrl", "alpha": 0.0}]
    with pytest.raises(ConfigError, match=r"study\.tuned\.alpha"):
        load_section(params, "study")


def test_env_overrides_read_yaml_values_and_refuse_unknown_names(params: dict[str, Any]) -> None:
    serve = params["serve"]
    env = {
        "RANKCAL_SERVE_PORT": "8080",
        "RANKCAL_SERVE_BATCHING": "false",
        "RANKCAL_SERVE_TIMEOUT_S": "2.5",
        "RANKCAL_MODEL": "other.onnx",  # another variable of the project: not a serve key
        "HOME": "/root",
    }
    out = env_overrides(serve, "serve", env)
    assert (out["port"], out["batching"], out["timeout_s"]) == (8080, False, 2.5)
    assert out["window"] == serve["window"] and serve["port"] != 8080  # a copy, the rest kept
    parsed = load_section({**params, "serve": out}, "serve")
    assert parsed.port == 8080 and parsed.batching is False
    with pytest.raises(ConfigError, match=r"RANKCAL_SERVE_PROT names no serve key"):
        env_overrides(serve, "serve", {"RANKCAL_SERVE_PROT": "1"})
    # validated like the file: a word where a number belongs names the key and the value
    bad = env_overrides(serve, "serve", {"RANKCAL_SERVE_WORKERS": "two"})
    with pytest.raises(ConfigError, match=r"serve\.workers must be of type int, got 'two'"):
        load_section({**params, "serve": bad}, "serve")


def test_schema_file_is_the_parsers_and_validates_params(params: dict[str, Any]) -> None:
    import json

    import jsonschema

    schema = json.loads((ROOT / "params.schema.json").read_text())
    assert schema == params_schema(), "params.schema.json is stale: run make params-schema"
    assert (
        (ROOT / "params.yaml")
        .read_text()
        .startswith("# yaml-language-server: $schema=params.schema.json\n")
    )
    jsonschema.Draft202012Validator(schema).validate(params)
    for section, key, value in [
        ("train", "learning_rate", 0.1),  # unknown key
        ("train", "epochs", "ten"),  # wrong type
        ("loss", "mixing", "cutout"),  # not a choice
    ]:
        bad = copy.deepcopy(params)
        bad[section][key] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(schema).validate(bad)
    bad = copy.deepcopy(params)
    del bad["serve"]["port"]  # missing key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_model_card_numbers_are_strict() -> None:
    from pipeline.model_card import ReferenceConfidence

    raw = {"bin_edges": [0.0, 0.5, 1.0], "counts": [1, "2"], "mean": 0.5}
    with pytest.raises(ConfigError, match=r"card\.counts\[1\] must be of type int, got '2'"):
        parse_dataclass(ReferenceConfidence, raw, "card")


def test_study_validation_share_is_checked_and_applied(params: dict[str, Any]) -> None:
    from pipeline.study import study_data_config

    study = load_section(params, "study")
    data = study_data_config(load_section(params, "data"), study)
    # the study's 2,000 of 10,000 for validation; everything else is the data section's
    assert study.val_fraction * study.max_train == 2000
    assert data.val_fraction == study.val_fraction
    assert data.seed == params["data"]["seed"] and data.dataset == params["data"]["dataset"]
    params["study"]["val_fraction"] = 1.5
    with pytest.raises(ConfigError, match=r"study.val_fraction.*in \(0, 1\)"):
        load_section(params, "study")


def test_mixed_bn_freeze_is_refused_for_mixup_which_has_no_raw_pass(
    params: dict[str, Any],
) -> None:
    params["loss"].update(name="mrl", mixed_bn="freeze")
    assert load_section(params, "loss").mixed_bn == "freeze"
    params["loss"]["mixed_bn"] = "off"
    with pytest.raises(ConfigError, match=r"loss\.mixed_bn"):
        load_section(params, "loss")
    params["loss"].update(name="mixup", mixed_bn="freeze")
    with pytest.raises(ConfigError, match=r"loss\.mixed_bn: freeze needs a raw pass .* mixup"):
        load_section(params, "loss")
