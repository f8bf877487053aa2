"""The exported model behind the service (serving/predictor.py), against a direct ORT run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pipeline.feature_norm import norm_rank
from pipeline.images import fit_image
from pipeline.model_card import INPUT_NAME, METADATA_KEY
from pipeline.preprocessing import to_model_input
from serving.predictor import (
    CPU,
    ModelFileError,
    Predictor,
    cuda_driver_present,
    entropy,
    execution_providers,
    top_k,
)
from tests.serving.conftest import CLASS_NAMES, SIZE, ExportedModel, quadrant_images


@pytest.fixture(scope="module")
def predictor(exported_model: ExportedModel) -> Predictor:
    return Predictor(exported_model.path, top_k=3, providers=[CPU])


def direct_probabilities(model: ExportedModel, images: np.ndarray) -> np.ndarray:
    """What the data stage's and evaluation's code gives: fit, normalise, run the graph."""
    session = ort.InferenceSession(str(model.path), providers=[CPU])
    fitted = np.stack([fit_image(im, (SIZE, SIZE), 1, model.card.resize) for im in images])
    x = to_model_input(fitted, model.card.mean, model.card.std)
    return session.run(["probabilities"], {INPUT_NAME: x})[0]


def test_card_and_provider_come_from_the_model(
    predictor: Predictor, exported_model: ExportedModel
) -> None:
    assert predictor.card == exported_model.card
    assert predictor.image_shape == (SIZE, SIZE, 1)
    assert predictor.provider == CPU
    assert predictor.top_k == 3


def test_predictions_match_a_direct_onnx_run(
    predictor: Predictor, exported_model: ExportedModel
) -> None:
    images, labels = quadrant_images(16, seed=3)
    expected = direct_probabilities(exported_model, images)
    out = predictor.predict(images, batch_size=5)  # chunked: 5 + 5 + 5 + 1
    np.testing.assert_allclose(out.probabilities, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out.predicted, expected.argmax(axis=1))
    np.testing.assert_allclose(out.confidence, expected.max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(out.is_ood, out.confidence < exported_model.card.ood_threshold)
    # The briefly trained model gets the toy task mostly right, so classes vary in the tests.
    assert (out.predicted == labels).mean() >= 0.75


@pytest.mark.parametrize("kind", ["grey", "rgb", "rgba", "larger_rgb"])
def test_image_kinds_are_conformed_like_evaluation(
    predictor: Predictor, exported_model: ExportedModel, kind: str
) -> None:
    grey, _ = quadrant_images(4, seed=5)
    rgb = np.repeat(grey, 3, axis=3)
    rgb[..., 0] //= 2  # make the channels differ so the luma weights matter
    decoded = {
        "grey": grey,
        "rgb": rgb,
        # RGBA arrives from serving.images already composited: opaque alpha = plain RGB
        "rgba": rgb,
        "larger_rgb": np.repeat(np.repeat(rgb, 2, axis=1), 2, axis=2),
    }[kind]
    batch = predictor.conform(list(decoded))
    assert batch.shape == (4, SIZE, SIZE, 1)
    assert batch.dtype == np.uint8
    expected = direct_probabilities(exported_model, decoded)
    np.testing.assert_allclose(
        predictor.predict(batch, batch_size=8).probabilities, expected, rtol=1e-5, atol=1e-7
    )


def test_conform_accepts_mixed_sizes(predictor: Predictor) -> None:
    images = [np.zeros((3, 9, 1), np.uint8), np.full((30, 20, 3), 255, np.uint8)]
    batch = predictor.conform(images)
    assert batch.shape == (2, SIZE, SIZE, 1)
    assert batch[0].max() == 0
    assert batch[1].min() == 255


def test_top_k_is_sorted_and_ties_keep_class_order() -> None:
    probs = np.array([[0.1, 0.4, 0.1, 0.4], [0.7, 0.1, 0.15, 0.05]])
    np.testing.assert_array_equal(top_k(probs, 3), [[1, 3, 0], [0, 2, 1]])


def test_entropy_by_hand() -> None:
    # H([1/2, 1/4, 1/4, 0]) = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2; one-hot: 0; uniform: ln 4.
    probs = np.array([[0.5, 0.25, 0.25, 0.0], [0, 0, 1, 0], [0.25] * 4])
    np.testing.assert_allclose(entropy(probs), [1.5 * np.log(2), 0.0, np.log(4)], atol=1e-12)
    assert not np.signbit(entropy(probs)[1])  # 0.0, not -0.0 (which JSON shows as "-0.0")


def test_records_carry_every_field(predictor: Predictor) -> None:
    images, _ = quadrant_images(3, seed=7)
    out = predictor.predict(images, batch_size=8)
    records = predictor.records(out)
    assert len(records) == 3
    for i, record in enumerate(records):
        assert set(record) == {
            "class_index",
            "class_name",
            "confidence",
            "top_k",
            "entropy",
            "is_ood",
            "model_version",
        }
        assert record["class_name"] == CLASS_NAMES[record["class_index"]]
        assert record["model_version"] == "test-0001"
        probs = [entry["probability"] for entry in record["top_k"]]
        assert probs == sorted(probs, reverse=True)
        assert len(probs) == 3
        assert record["top_k"][0]["class_index"] == record["class_index"]
        assert probs[0] == pytest.approx(record["confidence"])
        assert record["entropy"] == pytest.approx(float(entropy(out.probabilities[i])))
        assert record["is_ood"] == (record["confidence"] < 0.6)


def test_top_k_is_capped_at_the_number_of_classes(exported_model: ExportedModel) -> None:
    predictor = Predictor(exported_model.path, top_k=10, providers=[CPU])
    images, _ = quadrant_images(1)
    record = predictor.records(predictor.predict(images, batch_size=1))[0]
    assert len(record["top_k"]) == len(CLASS_NAMES)
    assert sum(e["probability"] for e in record["top_k"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "images",
    [np.zeros((2, SIZE, SIZE, 1), np.float32), np.zeros((2, SIZE, SIZE, 3), np.uint8)],
)
def test_predict_refuses_other_shapes_and_dtypes(predictor: Predictor, images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        predictor.predict(images, batch_size=2)


def test_warm_up_runs(predictor: Predictor) -> None:
    predictor.warm_up()


def test_a_model_without_card_is_refused(exported_model: ExportedModel, tmp_path: Path) -> None:
    proto = onnx.load(str(exported_model.path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match="model card"):
        Predictor(bare, top_k=1, providers=[CPU])


def test_execution_providers_end_with_cpu() -> None:
    providers = execution_providers()
    assert providers[-1] == CPU
    assert ("CUDAExecutionProvider" in providers) == (
        "CUDAExecutionProvider" in ort.get_available_providers() and cuda_driver_present()
    )


def test_cuda_is_asked_for_only_where_a_driver_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.predictor as predictor_module

    cuda = "CUDAExecutionProvider"
    monkeypatch.setattr(ort, "get_available_providers", lambda: [cuda, CPU])
    monkeypatch.setattr(predictor_module, "cuda_driver_present", lambda: False)
    assert execution_providers() == [CPU]
    monkeypatch.setattr(predictor_module, "cuda_driver_present", lambda: True)
    assert execution_providers() == [cuda, CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert execution_providers() == [CPU]


def test_the_service_session_does_not_spin_wait(predictor: Predictor) -> None:
    options = predictor.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def _with_card(model: ExportedModel, path: Path, **changes: object) -> Path:
    """A copy of the exported model whose card has ``changes`` (or lacks keys set to None)."""
    return _with_card_of(onnx.load(str(model.path)), path, **changes)


@pytest.mark.parametrize("name", ["energy", "entropy"])
def test_a_card_flags_by_its_score_of_the_calibrated_logits(
    exported_model: ExportedModel, tmp_path: Path, name: str
) -> None:
    images, _ = quadrant_images(16, seed=4)
    x = to_model_input(images, exported_model.card.mean, exported_model.card.std)
    session = ort.InferenceSession(str(exported_model.path), providers=[CPU])
    logits = session.run(["logits"], {INPUT_NAME: x})[0].astype(np.float64)
    top = logits.max(axis=1)
    logsumexp = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    log_p = logits - logsumexp[:, None]
    by_hand = logsumexp if name == "energy" else (np.exp(log_p) * log_p).sum(axis=1)
    threshold = float(np.median(by_hand))
    path = _with_card(
        exported_model, tmp_path / f"{name}.onnx", ood_score=name, ood_threshold=threshold
    )
    out = Predictor(path, top_k=1, providers=[CPU]).predict(images, batch_size=4)
    np.testing.assert_allclose(out.ood_score, by_hand, rtol=1e-6)
    np.testing.assert_array_equal(out.is_ood, by_hand < threshold)
    assert 0 < out.is_ood.sum() < len(images)


def test_a_card_from_before_the_score_choice_flags_by_confidence(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    images, _ = quadrant_images(8, seed=5)
    old = Predictor(
        _with_card(exported_model, tmp_path / "old.onnx", ood_score=None), top_k=1, providers=[CPU]
    )
    assert old.card.ood_score == "msp"
    out = old.predict(images, batch_size=8)
    np.testing.assert_array_equal(out.ood_score, out.confidence)
    with pytest.raises(ValueError, match="ood_score"):
        Predictor(
            _with_card(exported_model, tmp_path / "bad.onnx", ood_score="mahalanobis"),
            top_k=1,
            providers=[CPU],
        )


def test_inputs_unlike_any_training_image_are_flagged_whatever_the_score(
    predictor: Predictor,
) -> None:
    """The toy training images have a mean intensity near 0.25 (the card's reference); flat
    mid-grey ones (what a photo of noise becomes once downscaled) never occurred."""
    typical, _ = quadrant_images(8, seed=6)
    grey = np.full((4, SIZE, SIZE, 1), 128, np.uint8)
    out = predictor.predict(np.concatenate([typical, grey]), batch_size=16)
    assert not out.atypical[:8].any() and out.atypical[8:].all()
    np.testing.assert_array_equal(out.is_ood[8:], [True] * 4)
    np.testing.assert_array_equal(out.is_ood[:8], out.ood_score[:8] < predictor.card.ood_threshold)
    assert out.input_stats is not None and out.input_stats["mean"][8] == pytest.approx(128 / 255)


def test_feature_norm_ranks_come_from_the_graphs_norms_and_the_cards_deciles(
    predictor: Predictor, exported_model: ExportedModel
) -> None:
    typical, _ = quadrant_images(12, seed=7)
    grey = np.full((4, SIZE, SIZE, 1), 128, np.uint8)
    images = np.concatenate([typical, grey])
    x = to_model_input(images, exported_model.card.mean, exported_model.card.std)
    session = ort.InferenceSession(str(exported_model.path), providers=[CPU])
    norms = session.run(["feature_norm"], {INPUT_NAME: x})[0]
    out = predictor.predict(images, batch_size=5)  # chunked: the norms are joined in order
    quantiles = exported_model.card.feature_reference.quantiles
    assert out.input_stats is not None
    np.testing.assert_allclose(out.input_stats["feature_norm"], norm_rank(norms, quantiles))
    # The toy's own kind of image spreads over the training ranks; flat grey ones do not.
    assert 0.0 < float(np.median(out.input_stats["feature_norm"][:12])) < 1.0


def test_a_card_with_a_feature_reference_needs_the_feature_output(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    proto = onnx.load(str(exported_model.path))
    proto.graph.output.pop()  # drop feature_norm: the graph ends at logits and probabilities
    path = tmp_path / "two_outputs.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelFileError, match="feature_norm"):
        Predictor(path, top_k=1, providers=[CPU])
    # Its card without the reference (as exported before the statistic): served, no feature rank.
    old = Predictor(
        _with_card_of(proto, tmp_path / "old.onnx", feature_reference=None),
        top_k=1,
        providers=[CPU],
    )
    out = old.predict(quadrant_images(4, seed=8)[0], batch_size=4)
    assert out.input_stats is not None and "feature_norm" not in out.input_stats
    assert "mean" in out.input_stats


def _with_card_of(proto: onnx.ModelProto, path: Path, **changes: object) -> Path:
    """``proto`` saved to ``path`` with ``changes`` to its card (keys set to None removed)."""
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    card = json.loads(entry.value)
    for key, value in changes.items():
        if value is None:
            card.pop(key)
        else:
            card[key] = value
    entry.value = json.dumps(card)
    onnx.save(proto, str(path))
    return path
