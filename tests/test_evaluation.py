"""Evaluation of a trained toy model: metrics tree, temperature use, serving reference, plots."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.checkpoint import load_model
from pipeline.config import load_section
from pipeline.evaluation import evaluate, summary, validity_evidence
from pipeline.model_card import FeatureReference, InputReference
from pipeline.plots import write_offline_template, write_plot_data
from pipeline.training import train
from tests.conftest import configs, synthetic_prepared


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    from pipeline.config import read_params
    from tests.conftest import ROOT

    params = read_params(ROOT / "params.yaml")
    base = synthetic_prepared()
    rng = np.random.default_rng(0)
    ood = {"noise": rng.integers(0, 256, size=(50, 12, 12, 1), dtype=np.uint8)}
    data = dataclasses.replace(base, ood=ood)
    model_cfg, loss_cfg, train_cfg = configs(
        params, train={"epochs": 2, "batch_size": 32, "threads": 1, "augment": "none"}
    )
    ckpt = tmp_path_factory.mktemp("ckpt")
    train(data, model_cfg, loss_cfg, train_cfg, ckpt)
    params["evaluate"].update(
        corruptions=["gaussian_noise", "contrast"], severities=[1, 5], shift_images=40
    )
    cfg = load_section(params, "evaluate")
    model, _ = load_model(ckpt / "best.pt")
    return evaluate(model, data, cfg), data, ckpt


def test_metrics_tree_reports_raw_and_scaled(evaluated: tuple[Any, Any, Path]) -> None:
    result, _, _ = evaluated
    m = result.metrics
    for split in ("test", "val"):
        assert set(m[split]) == {"raw", "scaled"}
        assert {"accuracy", "ece", "adaptive_ece", "classwise_ece", "nll", "brier"} <= set(
            m[split]["raw"]
        )
    # T is fitted by validation NLL, so scaling cannot make validation NLL worse
    assert m["val"]["scaled"]["nll"] <= m["val"]["raw"]["nll"] + 1e-9
    assert m["temperature"]["temperature"] == result.temperature > 0
    assert set(m["ood"]) == {"noise", "inverted_test"}
    assert set(m["ood"]["noise"]) == {"raw", "scaled"}


def test_shift_study_has_every_corruption_and_severity(evaluated: tuple[Any, Any, Path]) -> None:
    shift = evaluated[0].metrics["shift"]
    assert set(shift) == {"clean", "gaussian_noise", "contrast"}
    assert set(shift["contrast"]) == {"1", "5"}
    row = shift["contrast"]["5"]
    assert row["estimation_error"] == pytest.approx(
        abs(row["estimated_accuracy"] - row["accuracy"])
    )
    assert 0 <= row["accuracy"] <= 100 and 0 <= row["ece"] <= 100
    # the input drift of each row: small on clean test images, large at contrast severity 5
    assert shift["clean"]["0"]["input_psi"] < 0.5 < row["input_psi"]
    # ... and the feature norm's, with the larger of the two (what the validity signal reads)
    for rows in shift.values():
        for r in rows.values():
            assert r["drift_psi"] == max(r["input_psi"], r["feature_psi"]) >= 0
    assert shift["clean"]["0"]["feature_psi"] < 0.5


def test_serving_reference(evaluated: tuple[Any, Any, Path]) -> None:
    result, data, _ = evaluated
    ref = result.serving
    assert ref["temperature"] == result.temperature
    assert ref["class_names"] == [f"class_{k}" for k in range(4)]
    assert ref["mean"] == data.mean and ref["image_shape"] == [12, 12, 1]
    hist = ref["reference_confidence"]
    assert hist["bin_edges"][0] == 0.0 and hist["bin_edges"][-1] == 1.0
    assert len(hist["bin_edges"]) == len(hist["counts"]) + 1
    # every held-out image: validation and test
    assert sum(hist["counts"]) == len(data.val_idx) + len(data.test.labels)
    assert ref["test_accuracy"] == result.metrics["test"]["scaled"]["accuracy"]
    selection = result.metrics["ood_selection"]
    assert ref["ood_score"] == selection["chosen"] in ("msp", "entropy", "energy")
    assert ref["ood_threshold"] == selection["threshold"]
    assert ref["ood_tpr"] == selection["tpr"] == 0.95
    chosen = selection["candidates"][selection["chosen"]]["auroc"]
    assert chosen == max(c["auroc"] for c in selection["candidates"].values())
    if ref["ood_score"] == "msp":
        assert 0 < ref["ood_threshold"] <= 1


def test_input_reference_and_drift_evidence(evaluated: tuple[Any, Any, Path]) -> None:
    result, data, _ = evaluated
    reference = result.serving["input_reference"]
    card_reference = InputReference(**reference)  # what the export puts in the card
    assert sum(card_reference.mean) == len(data.train_idx)  # every training image, no val
    drift = result.metrics["input_drift"]
    assert set(drift) == {"test", "inverted_test", "noise"}
    # test images look like training images; inverted ones do not, in mean and dark/bright
    assert max(drift["test"].values()) < 0.1
    assert drift["inverted_test"]["mean"] > 1 and drift["inverted_test"]["dark_share"] > 1


def test_feature_reference_and_its_drift_evidence(evaluated: tuple[Any, Any, Path]) -> None:
    """The toy network ends in a linear layer: its feature norms are binned by their training
    deciles, a tenth of the training images in each bin, and compared on every set."""
    result, data, _ = evaluated
    features = FeatureReference(**result.serving["feature_reference"])  # as in the card
    assert sum(features.counts) == len(data.train_idx)
    assert max(features.counts) - min(features.counts) <= 0.02 * len(data.train_idx)
    drift = result.metrics["input_drift"]
    assert all("feature_norm" in drift[name] for name in ("test", "inverted_test", "noise"))
    assert drift["test"]["feature_norm"] < 0.5
    assert drift["noise"]["feature_norm"] > drift["test"]["feature_norm"]


def test_ood_flag_shares_by_score_statistics_and_either(evaluated: tuple[Any, Any, Path]) -> None:
    flags = evaluated[0].metrics["ood_flag"]
    assert set(flags) == {"val", "test", "inverted_test", "noise"}
    for shares in flags.values():
        assert max(shares["score"], shares["atypical"]) <= shares["either"]
        assert shares["either"] <= shares["score"] + shares["atypical"] + 1e-9
    # the threshold keeps 95% of validation images above it
    assert flags["val"]["score"] <= 5.0 + 1e-9


def test_inverted_test_images_are_scored_as_ood(evaluated: tuple[Any, Any, Path]) -> None:
    result, _, _ = evaluated
    inverted = result.metrics["ood"]["inverted_test"]
    assert set(inverted) == {"raw", "scaled"}
    assert set(inverted["scaled"]) == {"msp", "entropy", "energy"}
    assert 0 <= inverted["scaled"]["energy"]["auroc"] <= 100


def test_plot_files(evaluated: tuple[Any, Any, Path], tmp_path: Path) -> None:
    result, data, _ = evaluated
    write_plot_data(
        tmp_path,
        result.test_logits,
        result.test_labels,
        result.ood_logits,
        result.temperature,
        15,
        data.class_names,
    )
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"reliability.csv", "roc.csv", "confusion.csv", "reliability.png"}
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == len(result.test_labels) + 1
    first = data.class_names[int(result.test_labels[0])]
    assert rows[1].split(",")[0] == first  # class names, not indices
    # the series the plots compare are columns, named in words
    reliability = (tmp_path / "reliability.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in reliability[1:]} == {"before scaling", "temperature-scaled"}
    roc = (tmp_path / "roc.csv").read_text().splitlines()
    assert roc[0] == "ood_set,fpr,tpr" and {r.split(",")[0] for r in roc[1:]} == {"noise"}


def test_offline_template_has_vega_inline_and_no_cdn(tmp_path: Path) -> None:
    from dvc_render.html import HTML

    path = tmp_path / "page.html"
    write_offline_template(path)
    page = path.read_text()
    assert "http://" not in page.split("<script")[0] and "cdn.jsdelivr" not in page
    assert "window.vegaEmbed" in page and "{scripts}" not in page
    rendered = HTML(page).with_element("<div id='p'></div>").embed()
    assert "<div id='p'></div>" in rendered and "{plot_divs}" not in rendered


def test_validity_evidence_bands_rows_by_drift_psi() -> None:
    shift = {
        "clean": {"0": {"drift_psi": 0.01, "estimation_error": 1.0}},
        "rotate": {
            "1": {"drift_psi": 0.1, "estimation_error": 3.0},
            "5": {"drift_psi": 1.3, "estimation_error": 39.0},
        },
        "invert": {"5": {"drift_psi": 10.0, "estimation_error": 54.0}},
        # a model without the feature statistic: its rows have input_psi only
        "old": {"1": {"input_psi": 0.2, "estimation_error": 5.0}},
    }
    assert validity_evidence(shift) == {
        "0-0.25": {"rows": 3, "min_error": 1.0, "median_error": 3.0, "max_error": 5.0},
        "1-3": {"rows": 1, "min_error": 39.0, "median_error": 39.0, "max_error": 39.0},
        "3-inf": {"rows": 1, "min_error": 54.0, "median_error": 54.0, "max_error": 54.0},
    }


def test_evaluation_reports_validity_evidence(evaluated: tuple[Any, Any, Path]) -> None:
    metrics = evaluated[0].metrics
    rows = sum(len(levels) for levels in metrics["shift"].values())
    assert sum(band["rows"] for band in metrics["validity"].values()) == rows


def test_summary_picks_the_figures_compared_between_runs() -> None:
    report = {"accuracy": 90.0, "ece": 1.0, "adaptive_ece": 0.9, "nll": 0.3, "brier": 0.15}
    raw = {"accuracy": 90.0, "ece": 3.0, "adaptive_ece": 2.9, "nll": 0.35, "brier": 0.16}
    ood = {
        name: {"scaled": {s: {"auroc": a + k} for k, s in enumerate(("msp", "entropy"))}}
        for name, a in (("digits", 80.0), ("noise", 60.0))
    }
    metrics = {
        "test": {"raw": raw, "scaled": report},
        "temperature": {"temperature": 1.5},
        "ood": ood,
        "ood_selection": {"chosen": "entropy"},
        "shift": {
            "clean": {"0": {"estimation_error": 0.5}},  # not a corruption: left out
            "blur": {"1": {"estimation_error": 2.0}, "5": {"estimation_error": 10.0}},
            "noise": {"1": {"estimation_error": 4.0}},
        },
    }
    assert summary(metrics) == {
        "accuracy": 90.0,
        "ece": 1.0,
        "ece_before_ts": 3.0,
        "adaptive_ece": 0.9,
        "nll": 0.3,
        "nll_before_ts": 0.35,
        "brier": 0.15,
        "temperature": 1.5,
        "ood_auroc": {"digits": 81.0, "noise": 61.0},  # the chosen score's (entropy)
        "shift_estimation_error": 4.0,  # median of 2, 10, 4
    }


def test_evaluation_measures_the_ranking_hypothesis(evaluated: tuple[Any, Any, Path]) -> None:
    ranking = evaluated[0].metrics["ranking"]
    assert {"raw_above_mixed", "kendall_tau", "spearman", "pairs", "copies", "alpha"} <= set(
        ranking
    )
    assert 0 <= ranking["raw_above_mixed"] <= 100 and -1 <= ranking["kendall_tau"] <= 1
    assert ranking["pairs"] > 0
    figures = summary(evaluated[0].metrics)
    assert figures["raw_above_mixed"] == ranking["raw_above_mixed"]


def test_test_ece_has_its_bootstrap_interval(evaluated: tuple[Any, Any, Path]) -> None:
    test = evaluated[0].metrics["test"]
    for name in ("raw", "scaled"):
        low, high = test[name]["ece_ci95"]
        assert low <= test[name]["ece"] <= high  # percent, like the ECE
    figures = summary(evaluated[0].metrics)
    assert [figures["ece_ci95_low"], figures["ece_ci95_high"]] == test["scaled"]["ece_ci95"]


def test_shift_study_corrupts_with_the_datasets_own_severities(
    evaluated: tuple[Any, Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import evaluation
    from pipeline.config import read_params
    from pipeline.data import corruptions
    from tests.conftest import ROOT

    _, data, _ = evaluated
    params = read_params(ROOT / "params.yaml")
    params["evaluate"].update(corruptions=["contrast"], severities=[2], shift_images=40)
    cfg = load_section(params, "evaluate")
    seen: list[np.ndarray] = []

    def outputs_of(images: np.ndarray) -> tuple[np.ndarray, None]:
        seen.append(images)
        return np.zeros((len(images), 4)), None

    # A dataset with a table of its own is corrupted with it, any other with CIFAR-C's values.
    own = {**corruptions.SEVERITY_PARAMS, "contrast": (1.0, 0.5, 0.5, 0.5, 0.5)}
    monkeypatch.setitem(corruptions.SEVERITY_TABLES, "synthetic", own)
    evaluation.shift_study(outputs_of, data, cfg, temperature=1.0)
    clean, corrupted = seen
    expected = corruptions.contrast(clean, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(corrupted, expected)
    seen.clear()
    other = dataclasses.replace(data, dataset="cifar10")
    evaluation.shift_study(outputs_of, other, cfg, temperature=1.0)
    np.testing.assert_array_equal(seen[1], corruptions.contrast(seen[0], 0.3, None))  # type: ignore[arg-type]
