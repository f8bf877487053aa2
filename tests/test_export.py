"""ONNX export of a toy model: names, dynamic batch, parity with PyTorch, metadata, verification."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pipeline.checkpoint import load_model
from pipeline.config import EvaluateConfig, load_section, read_params
from pipeline.data import ImageSet, PreparedData
from pipeline.evaluation import Evaluation, evaluate
from pipeline.export import (
    PROB_ATOL,
    CalibratedNet,
    ExportError,
    export_onnx,
    verify_export,
)
from pipeline.inference import final_linear
from pipeline.model_card import FEATURE_OUTPUT, INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ModelCard
from pipeline.preprocessing import to_model_input
from pipeline.training import train
from tests.conftest import ROOT, configs, synthetic_prepared


@dataclass
class Toy:
    """A trained toy model, its data and evaluation, and its card."""

    model: nn.Module
    data: PreparedData
    cfg: EvaluateConfig
    evaluation: Evaluation
    card: ModelCard


def toy_pipeline(checkpoints: Path) -> Toy:
    """Train one epoch on label-noised synthetic data and evaluate: confidences spread over bins.

    Clean synthetic data saturates every confidence at 1, which would make the ECE check trivial.
    """
    base = synthetic_prepared()
    rng = np.random.default_rng(1)
    labels = base.train.labels.copy()
    flip = rng.random(len(labels)) < 0.3
    labels[flip] = rng.integers(0, base.num_classes, int(flip.sum()))
    pool = ImageSet(base.train.images, labels)
    data = dataclasses.replace(base, train=pool, test=pool)
    params = read_params(ROOT / "params.yaml")
    model_cfg, loss_cfg, train_cfg = configs(
        params, train={"epochs": 1, "batch_size": 32, "threads": 1, "augment": "none"}
    )
    train(data, model_cfg, loss_cfg, train_cfg, checkpoints)
    params["evaluate"].update(corruptions=["contrast"], severities=[1], shift_images=40)
    cfg = load_section(params, "evaluate")
    model, _ = load_model(checkpoints / "best.pt")
    result = evaluate(model, data, cfg)
    return Toy(model, data, cfg, result, ModelCard.from_reference(result.serving, "test-1"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Toy:
    return toy_pipeline(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def exported(toy: Toy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(toy.model, toy.card, path)
    return path


@pytest.fixture(scope="module")
def exported_t2(toy: Toy, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelCard]:
    """The same network exported with a temperature of 2."""
    card = dataclasses.replace(toy.card, temperature=2.0)
    path = tmp_path_factory.mktemp("onnx_t2") / "model.onnx"
    export_onnx(toy.model, card, path)
    return path, card


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def model_input(toy: Toy, n: int) -> np.ndarray:
    return to_model_input(toy.data.test.images[:n], toy.card.mean, toy.card.std)


def verify(toy: Toy, path: Path, card: ModelCard, expected_ece: float) -> dict:
    test = toy.data.test
    return verify_export(path, toy.model, test.images, test.labels, card, expected_ece, 15, 64)


def test_graph_takes_images_and_returns_logits_probabilities_and_feature_norms(
    toy: Toy, exported: Path
) -> None:
    sess = session(exported)
    assert toy.card.feature_reference is not None  # the toy net ends in a linear layer
    assert [i.name for i in sess.get_inputs()] == [INPUT_NAME] == ["images"]
    assert [o.name for o in sess.get_outputs()] == [*OUTPUT_NAMES, FEATURE_OUTPUT]
    assert list(OUTPUT_NAMES) == ["logits", "probabilities"]
    assert FEATURE_OUTPUT == "feature_norm"
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # symbolic batch axis


def test_feature_norm_output_is_the_norm_of_the_last_linear_layers_input(
    toy: Toy, exported: Path
) -> None:
    x = model_input(toy, 7)
    norms = session(exported).run([FEATURE_OUTPUT], {INPUT_NAME: x})[0]
    layer = final_linear(toy.model, torch.from_numpy(x))
    assert isinstance(layer, nn.Linear)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    with torch.no_grad():
        toy.model.eval()(torch.from_numpy(x))
    handle.remove()
    by_hand = np.sqrt((seen[0].flatten(1).double().numpy() ** 2).sum(axis=1))
    assert norms.shape == (7,)
    np.testing.assert_allclose(norms, by_hand, rtol=1e-5)


def test_card_without_feature_reference_exports_two_outputs(toy: Toy, tmp_path: Path) -> None:
    card = dataclasses.replace(toy.card, feature_reference=None)
    path = tmp_path / "model.onnx"
    export_onnx(toy.model, card, path)
    assert [o.name for o in session(path).get_outputs()] == list(OUTPUT_NAMES)
    figures = verify(toy, path, card, toy.evaluation.metrics["test"]["scaled"]["ece"])
    assert "max_rel_feature_norm_diff" not in figures


@pytest.mark.parametrize("n", [1, 5, 64])
def test_any_batch_size_matches_torch(toy: Toy, exported: Path, n: int) -> None:
    x = model_input(toy, n)
    logits, probs = session(exported).run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    assert logits.shape == probs.shape == (n, 4)
    with torch.no_grad():
        raw = toy.model.eval()(torch.from_numpy(x)).numpy()
        _, torch_probs = CalibratedNet(toy.model, toy.card.temperature).eval()(torch.from_numpy(x))
    np.testing.assert_allclose(logits, raw / toy.card.temperature, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs, torch_probs.numpy(), rtol=0, atol=PROB_ATOL)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs.argmax(1) == torch_probs.numpy().argmax(1)).all()


def test_metadata_round_trips_to_an_equal_card(toy: Toy, exported: Path) -> None:
    meta = session(exported).get_modelmeta().custom_metadata_map
    assert ModelCard.from_json(meta[METADATA_KEY]) == toy.card


def test_temperature_two_halves_the_logits(toy: Toy, exported_t2: tuple[Path, ModelCard]) -> None:
    x = model_input(toy, 3)
    logits, probs = session(exported_t2[0]).run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    with torch.no_grad():
        raw = toy.model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(2 * logits, raw, rtol=1e-5, atol=1e-6)
    z = raw[0] / 2  # softmax by hand, row 0
    np.testing.assert_allclose(probs[0], np.exp(z) / np.exp(z).sum(), atol=1e-6)


def test_verify_passes_on_the_evaluate_ece(toy: Toy, exported: Path) -> None:
    ece = toy.evaluation.metrics["test"]["scaled"]["ece"]
    assert 1.0 < ece < 50.0  # non-trivial: confidences spread over several bins
    figures = verify(toy, exported, toy.card, ece)
    assert figures["ece_onnx"] == pytest.approx(ece, abs=1e-4) and figures["ece_unit"] == "percent"
    assert figures["batch_sizes"] == [1, 64] and figures["argmax_agreement"] == 1.0
    assert figures["max_abs_prob_diff"] <= PROB_ATOL and figures["opset"] >= 18
    assert figures["onnx_bytes"] == exported.stat().st_size and figures["test_images"] == 400
    assert figures["accuracy_onnx"] == toy.evaluation.metrics["test"]["scaled"]["accuracy"]
    assert 0.0 <= figures["max_rel_feature_norm_diff"] <= 1e-4


def test_verify_raises_when_the_feature_norms_disagree(
    toy: Toy, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyTorch's side of the comparison made 1% larger: the check must catch it."""
    import pipeline.export as export_module

    real = export_module.feature_norm
    monkeypatch.setattr(export_module, "feature_norm", lambda f: 1.01 * real(f))
    ece = toy.evaluation.metrics["test"]["scaled"]["ece"]
    with pytest.raises(ExportError, match="feature norms"):
        verify(toy, exported, toy.card, ece)


def test_verify_raises_on_a_wrong_expected_ece(toy: Toy, exported: Path) -> None:
    ece = toy.evaluation.metrics["test"]["scaled"]["ece"]
    with pytest.raises(ExportError, match=r"ECE mismatch: ONNX .*% vs evaluate .*%"):
        verify(toy, exported, toy.card, ece + 0.01)


def test_verify_raises_when_the_graph_temperature_differs_from_torch(
    toy: Toy, exported_t2: tuple[Path, ModelCard], tmp_path: Path
) -> None:
    # Graph divides by 2, metadata claims the fitted T: PyTorch (with the card's T) disagrees.
    proto = onnx.load_model(str(exported_t2[0]))
    onnx.helper.set_model_props(proto, {METADATA_KEY: toy.card.to_json()})
    tampered = tmp_path / "tampered.onnx"
    onnx.save_model(proto, str(tampered))
    with pytest.raises(ExportError, match=r"ONNX vs PyTorch at batch 1: max \|prob diff\|"):
        verify(toy, tampered, toy.card, toy.evaluation.metrics["test"]["scaled"]["ece"])


def test_verify_raises_when_the_metadata_card_differs(
    toy: Toy, exported_t2: tuple[Path, ModelCard]
) -> None:
    with pytest.raises(
        ExportError, match=r"metadata card differs from the expected card in \[.temperature.\]"
    ):
        verify(toy, exported_t2[0], toy.card, toy.evaluation.metrics["test"]["scaled"]["ece"])


def test_verify_raises_on_a_fixed_batch_axis(toy: Toy, exported: Path, tmp_path: Path) -> None:
    proto = onnx.load_model(str(exported))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    fixed = tmp_path / "fixed.onnx"
    onnx.save_model(proto, str(fixed))
    with pytest.raises(ExportError, match="batch axis is fixed to 2"):
        verify(toy, fixed, toy.card, toy.evaluation.metrics["test"]["scaled"]["ece"])


def test_verify_rejects_images_of_another_shape(toy: Toy, exported: Path) -> None:
    images = np.zeros((3, 28, 28, 1), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"images must be \(N, \*\[12, 12, 1\]\)"):
        verify_export(exported, toy.model, images, np.zeros(3, np.int64), toy.card, 1.0, 15, 8)
