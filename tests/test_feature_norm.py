"""The feature-norm statistic: deciles, ranks, the reference counts, the card's validation, and the
norms the inference code reads off a network's last linear layer."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import ConfigError
from pipeline.feature_norm import LEVELS, check_quantiles, norm_rank, reference
from pipeline.inference import final_linear, predict_outputs
from pipeline.input_stats import EDGES
from pipeline.model_card import FEATURE_OUTPUT, OUTPUT_NAMES, FeatureReference, ModelCard
from tests.test_export import Toy
from tests.test_export import toy as toy  # the trained toy and its card (a fixture)


def test_levels_are_the_deciles() -> None:
    np.testing.assert_allclose(LEVELS, np.arange(11) / 10)


def test_rank_interpolates_between_deciles_and_clips_outside() -> None:
    quantiles = [0.0, 1.0, 2.0, 4.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 20.0]
    norms = np.array([-1.0, 0.0, 0.5, 3.0, 6.0, 16.5, 20.0, 25.0])
    # 3.0 is half way from 2 (0.2) to 4 (0.3); 6.0 half way from 4 to 8; 16.5 is 0.9 + 0.05.
    expected = [0.0, 0.0, 0.05, 0.25, 0.35, 0.95, 1.0, 1.0]
    np.testing.assert_allclose(norm_rank(norms, quantiles), expected)


def test_reference_of_1_to_100_has_ten_images_per_tenth() -> None:
    norms = np.arange(1.0, 101.0)
    ref = reference(norms, EDGES)
    # np.quantile's linear rule: q = 1 + 99 * level.
    np.testing.assert_allclose(ref["quantiles"], [1 + 99 * level for level in LEVELS])
    # The rank of k is (k - 1) / 99, in the tenth (i - 1, i] / 10 when k - 1 is in
    # (9.9 (i - 1), 9.9 i]: k = 1..10 (k = 1 has rank 0, counted in the first), 11..20, ...,
    # 91..100.
    assert ref["counts"] == [10] * 10


@pytest.mark.parametrize(
    "bad, match",
    [
        ([1.0] * 11, "strictly increasing"),
        ([float(i) for i in range(10)], "11 quantiles"),
        ([-1.0, *map(float, range(10))], ">= 0"),
        ([float("nan"), *map(float, range(1, 11))], "finite"),
    ],
)
def test_bad_quantiles_are_refused(bad: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_quantiles(bad)


def test_a_network_whose_features_do_not_vary_has_no_reference() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        reference(np.full(50, 3.0), EDGES)
    with pytest.raises(ValueError, match="at least two"):
        reference(np.array([1.0]), EDGES)


def test_card_validates_and_round_trips_the_feature_reference(toy: Toy) -> None:
    card = toy.card
    assert card.feature_reference is not None
    assert card.output_names == (*OUTPUT_NAMES, FEATURE_OUTPUT)
    assert ModelCard.from_json(card.to_json()) == card
    raw = json.loads(card.to_json())
    del raw["feature_reference"]  # a card written before the statistic existed
    old = ModelCard.from_json(json.dumps(raw))
    assert old.feature_reference is None and old.output_names == OUTPUT_NAMES
    with pytest.raises(ConfigError, match=r"feature_reference\.counts"):
        FeatureReference(quantiles=card.feature_reference.quantiles, counts=[1] * 9)
    with pytest.raises(ConfigError, match=r"feature_reference\.quantiles"):
        FeatureReference(quantiles=[0.0] * 11, counts=[1] * 10)
    assert dataclasses.replace(card, feature_reference=None).output_names == OUTPUT_NAMES


class TwoLayers(nn.Module):
    """features = relu(W1 x); logits = W2 features: the norm of relu(W1 x) by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(2, 3, bias=False)
        self.out = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            self.out.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))


class ScaledHead(TwoLayers):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_final_linear_is_the_layer_returning_the_logits() -> None:
    net = TwoLayers()
    assert final_linear(net, torch.zeros(2, 1, 1, 2)) is net.out
    assert final_linear(ScaledHead(), torch.zeros(2, 1, 1, 2)) is None  # logits scaled after it
    assert final_linear(nn.Conv2d(1, 2, 1), torch.zeros(2, 1, 1, 1)) is None  # no linear layer


def test_predict_outputs_returns_the_norms_of_the_penultimate_features() -> None:
    net = TwoLayers()
    # (1, 1, 2) images; mean 0, std 1/255 makes the model input the raw pixel values.
    images = np.array([[[[3], [4]]], [[[0], [2]]]], dtype=np.uint8).reshape(2, 1, 2, 1)
    logits, norms = predict_outputs(net, images, [0.0], [1 / 255], 1, net.out)
    # Image 1: features relu([3, 4, 7]) -> norm sqrt(9 + 16 + 49); image 2: [0, 2, 2] -> sqrt(8).
    np.testing.assert_allclose(norms, [np.sqrt(74.0), np.sqrt(8.0)], rtol=1e-5)
    np.testing.assert_allclose(logits, [[14.0, 14.0], [4.0, 4.0]], rtol=1e-5)
    assert predict_outputs(net, images, [0.0], [1 / 255], 2)[1] is None
