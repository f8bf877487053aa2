"""Evaluation of a trained model: calibration before/after temperature scaling, OOD detection,
calibration under synthetic shift, and the reference statistics serving needs.

Inputs go through :func:`pipeline.preprocessing.to_model_input`, the function the service uses,
so evaluation and serving cannot drift apart.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.calibration import estimated_accuracy, fit_temperature, softmax
from pipeline.config import EvaluateConfig
from pipeline.data.corruptions import corrupt, severity_table
from pipeline.data.prepared import PreparedData
from pipeline.data.split import stratified_subset
from pipeline.drift import bin_counts, psi
from pipeline.feature_norm import STATISTIC as FEATURE_STAT
from pipeline.feature_norm import norm_rank
from pipeline.feature_norm import reference as feature_reference
from pipeline.inference import final_linear, logits_from_input, predict_outputs
from pipeline.input_stats import EDGES, atypical, input_statistics, reference_histograms
from pipeline.input_stats import STATISTICS as INPUT_STATS
from pipeline.metrics.calibration import (
    calibration_report,
    ece_interval,
    expected_calibration_error,
)
from pipeline.metrics.ood import max_softmax, ood_report
from pipeline.ood_selection import (
    SELECTION_SET,
    OODChoice,
    choose_ood_score,
    score,
    synthetic_ood,
)
from pipeline.preprocessing import to_model_input
from pipeline.ranking_check import check_ranking

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Everything the evaluate stage reports and plots.

    Attributes:
        metrics: The JSON-ready metrics tree (``metrics/eval.json``).
        test_logits: Logits of the test set.
        test_labels: Labels of the test set.
        ood_logits: Logits of every OOD set.
        temperature: The fitted temperature (applied as ``softmax(z / T)``).
        serving: The reference statistics serving needs (``calibration.json``).
    """

    metrics: dict[str, Any]
    test_logits: np.ndarray
    test_labels: np.ndarray
    ood_logits: dict[str, np.ndarray]
    temperature: float
    serving: dict[str, Any] = field(default_factory=dict)


def evaluate(model: nn.Module, data: PreparedData, cfg: EvaluateConfig) -> Evaluation:
    """Evaluate ``model`` on ``data``'s validation, test and OOD sets.

    The temperature is fitted on the validation split by NLL; every calibration and OOD metric
    is reported before (``raw``) and after (``scaled``) dividing the logits by it.

    Args:
        model: A trained classifier.
        data: The prepared dataset (its validation split fits the temperature).
        cfg: The ``evaluate`` section.

    Returns:
        Metrics, logits and the serving reference.
    """
    layer = _feature_layer(model, data)

    def outputs_of(images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return predict_outputs(model, images, data.mean, data.std, cfg.batch_size, layer)

    def logits_of(images: np.ndarray) -> np.ndarray:
        return outputs_of(images)[0]

    # The training images both references are built on: pixel statistics, and the feature norms.
    reference_images = data.train.images[_reference_rows(data)]
    input_reference = reference_histograms(reference_images)
    features = None
    if layer is not None:
        try:
            features = feature_reference(outputs_of(reference_images)[1], EDGES)
        except ValueError as err:
            logger.warning("no feature-norm reference (%s): it is not served", err)
            layer = None
    val_images = data.train.images[data.val_idx]
    val_labels = data.train.labels[data.val_idx]
    val_logits = logits_of(val_images)
    fit = fit_temperature(val_logits, val_labels)
    if fit.method != "nll":
        logger.warning("temperature scaling: %s; the model is served at T = 1", fit.method)
    t = fit.temperature
    test_logits, test_norms = outputs_of(data.test.images)
    labels = data.test.labels
    test_reports = {}
    for name, temperature in (("raw", 1.0), ("scaled", t)):
        probs = softmax(test_logits, temperature)
        report = calibration_report(probs, labels, cfg.n_bins)
        # How much of an ECE difference the test set's size alone could make (bootstrap, 95%).
        low, high = ece_interval(probs, labels, cfg.n_bins)
        test_reports[name] = {**report, "ece_ci95": [100.0 * low, 100.0 * high]}
    metrics: dict[str, Any] = {
        "temperature": asdict(fit),
        "test": test_reports,
        "val": {
            "raw": calibration_report(softmax(val_logits), val_labels, cfg.n_bins),
            "scaled": calibration_report(softmax(val_logits, t), val_labels, cfg.n_bins),
        },
    }
    ood_outputs = {name: outputs_of(images) for name, images in data.ood.items()}
    ood_logits = {name: logits for name, (logits, _) in ood_outputs.items()}
    metrics["ood"] = {
        name: {"raw": ood_report(test_logits, z), "scaled": ood_report(test_logits / t, z / t)}
        for name, z in ood_logits.items()
    }
    # Inverted test images (a light background instead of a dark one): a shift any deployment
    # meets, scored here as OOD, never used to choose the serving score.
    inverted_images = 255 - np.asarray(data.test.images)
    inverted, inverted_norms = outputs_of(inverted_images)
    metrics["ood"]["inverted_test"] = {
        "raw": ood_report(test_logits, inverted),
        "scaled": ood_report(test_logits / t, inverted / t),
    }
    metrics["shift"] = shift_study(outputs_of, data, cfg, t, input_reference, features)
    metrics["ranking"] = ranking_hypothesis(model, data, cfg)
    metrics["validity"] = validity_evidence(metrics["shift"])
    synthetic = logits_of(synthetic_ood(val_images, seed=0))
    choice = choose_ood_score(val_logits / t, synthetic / t, cfg.ood_tpr)
    metrics["ood_selection"] = {
        "set": SELECTION_SET,
        "candidates": choice.candidates,
        "chosen": choice.name,
        "threshold": choice.threshold,
        "tpr": choice.tpr,
    }
    logger.info(
        "serving OOD score: %s (AUROC on the selection set: %s), threshold %.4g",
        choice.name,
        ", ".join(f"{k} {v['auroc']:.1f}" for k, v in choice.candidates.items()),
        choice.threshold,
    )
    metrics["input_drift"] = input_drift_evidence(data, input_reference)
    if features is not None:
        # The feature norm's PSI beside the input statistics', on the same sets.
        norms = {
            "test": test_norms,
            "inverted_test": inverted_norms,
            **{name: n for name, (_, n) in ood_outputs.items()},
        }
        for name, values in norms.items():
            metrics["input_drift"][name][FEATURE_STAT] = feature_psi(values, features)
    flagged_sets = {
        "val": (val_images, val_logits),
        "test": (data.test.images, test_logits),
        "inverted_test": (inverted_images, inverted),
        **{name: (images, ood_logits[name]) for name, images in data.ood.items()},
    }
    metrics["ood_flag"] = {
        name: ood_flag_shares(images, logits / t, choice, input_reference)
        for name, (images, logits) in flagged_sets.items()
    }
    # The confidence reference live traffic is compared with: every held-out image there is
    # (validation and test), since the reference's own sampling noise adds to the stream's in
    # the drift signal (pipeline.drift.sampling_psi), and on a small folder 120 test images
    # alone left the confidence PSI of clean traffic above the alert's 0.25.
    held_out_conf = np.concatenate([max_softmax(val_logits / t), max_softmax(test_logits / t)])
    serving = serving_reference(data, t, choice, held_out_conf, cfg)
    serving["input_reference"] = {"edges": list(EDGES), **input_reference}
    serving["feature_reference"] = features
    # Alert rules compare live estimated accuracy with what evaluation measured.
    serving["test_accuracy"] = metrics["test"]["scaled"]["accuracy"]
    serving["test_ece"] = metrics["test"]["scaled"]["ece"]
    return Evaluation(metrics, test_logits, labels, ood_logits, t, serving)


# Training images the input reference is binned on: a stratified sample is as good as all of
# them for 20-bin histograms and keeps a large memory-mapped split from being read whole.
_REFERENCE_IMAGES = 10_000


def ranking_hypothesis(model: nn.Module, data: PreparedData, cfg: EvaluateConfig) -> dict:
    """:func:`pipeline.ranking_check.check_ranking` on the test images the shift study uses
    (``evaluate.shift_images``, stratified, seed 0): is the raw confidence above the mixed
    copies', and are the copies ordered by their mixing coefficient?"""
    images, labels = data.test.images, data.test.labels
    if cfg.shift_images is not None and cfg.shift_images < len(labels):
        keep = stratified_subset(labels, cfg.shift_images, seed=0)
        images, labels = images[keep], labels[keep]
    x = to_model_input(np.asarray(images), data.mean, data.std)
    return check_ranking(lambda a: logits_from_input(model, a, cfg.batch_size), x, labels)


def _feature_layer(model: nn.Module, data: PreparedData) -> nn.Module | None:
    """The layer whose input's norm is the feature statistic, or ``None`` (with a warning)."""
    h, w, c = data.image_shape
    device = next(model.parameters()).device
    sample = torch.zeros(2, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    layer = final_linear(model, sample)
    if layer is None:
        logger.warning(
            "no linear layer returns this network's logits: the feature-norm drift statistic "
            "is not measured nor served"
        )
    return layer


def feature_psi(norms: np.ndarray | None, features: dict[str, Any]) -> float:
    """PSI of ``norms``' training ranks against the training split's, on :data:`EDGES`."""
    if norms is None or not len(norms):
        raise ValueError("no feature norms to compare")
    counts = bin_counts(norm_rank(norms, features["quantiles"]), EDGES)
    return psi(counts, features["counts"])


def _reference_rows(data: PreparedData) -> np.ndarray:
    labels = data.train.labels[data.train_idx]
    if len(labels) <= _REFERENCE_IMAGES:
        return np.sort(data.train_idx)
    return np.sort(data.train_idx[stratified_subset(labels, _REFERENCE_IMAGES, seed=0)])


def input_drift_evidence(
    data: PreparedData, reference: dict[str, list[int]]
) -> dict[str, dict[str, float]]:
    """PSI of each input statistic against the training reference, for the test images (no
    shift: should stay small), the inverted test images and every OOD set (shifts: should not).

    What the service's input-drift alert compares (``serving/prometheus/``), here on whole sets.
    """
    sets = {
        "test": reference_histograms(data.test.images),
        "inverted_test": reference_histograms(data.test.images, invert=True),
        **{name: reference_histograms(images) for name, images in data.ood.items()},
    }
    return {
        name: {stat: psi(counts[stat], reference[stat]) for stat in INPUT_STATS}
        for name, counts in sets.items()
    }


def ood_flag_shares(
    images: np.ndarray,
    calibrated_logits: np.ndarray,
    choice: OODChoice,
    reference: dict[str, list[int]],
    batch_size: int = 1024,
) -> dict[str, float]:
    """Percent of ``images`` the service would flag ``is_ood``: by the chosen score under its
    threshold, by input statistics unlike any training image
    (:func:`pipeline.input_stats.atypical`), and by either (what ``is_ood`` is)."""
    by_score = score(choice.name, calibrated_logits) < choice.threshold
    unlike = np.concatenate(
        [
            atypical(input_statistics(np.asarray(images[i : i + batch_size])), EDGES, reference)
            for i in range(0, len(images), batch_size)
        ]
    )
    return {
        "score": 100 * float(by_score.mean()),
        "atypical": 100 * float(unlike.mean()),
        "either": 100 * float((by_score | unlike).mean()),
    }


def shift_study(
    outputs_of: Any,
    data: PreparedData,
    cfg: EvaluateConfig,
    temperature: float,
    input_reference: dict[str, list[int]] | None = None,
    features: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy, ECE and confidence-estimated accuracy on corrupted test images.

    The estimate is the mean calibrated top-1 confidence (what serving publishes as
    "estimated accuracy"); ``estimation_error`` is its distance to the true accuracy, in points.
    With ``input_reference`` (:func:`pipeline.input_stats.reference_histograms` of the training
    split), each row also has ``input_psi``, the largest PSI of an input statistic against it:
    the figure the service's input-drift alert watches, so the rows show how large the
    estimation error gets at each level of it. With ``features`` (the feature-norm reference,
    :func:`pipeline.feature_norm.reference`), each row also has ``feature_psi``, and
    ``drift_psi``, the larger of the two: what the service's validity signal compares.

    ``outputs_of`` maps uint8 images to their logits and feature norms (or ``None``). The
    severities' parameters are the dataset's own where it has a table
    (:func:`pipeline.data.corruptions.severity_table`), else CIFAR-C's.

    References:
        Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions
        and Perturbations", ICLR 2019; Guillory et al., "Predicting with Confidence on Unseen
        Distributions", ICCV 2021.
    """
    images, labels = data.test.images, data.test.labels
    if cfg.shift_images is not None and cfg.shift_images < len(labels):
        keep = stratified_subset(labels, cfg.shift_images, seed=0)
        images, labels = images[keep], labels[keep]
    rows = [("clean", 0, images)]
    rows += [(name, level, None) for name in cfg.corruptions for level in cfg.severities]
    table = severity_table(data.dataset)
    results: dict[str, Any] = {}
    for name, level, clean in tqdm(rows, desc="shift", leave=False, disable=None):
        batch = (
            clean if clean is not None else corrupt(images, name, level, seed=level, table=table)
        )
        logits, norms = outputs_of(batch)
        probs = softmax(logits, temperature)
        acc = float((probs.argmax(1) == labels).mean())
        estimate = estimated_accuracy(probs)
        row = {
            "accuracy": 100 * acc,
            "ece": 100 * expected_calibration_error(probs, labels, cfg.n_bins),
            "estimated_accuracy": 100 * estimate,
            "estimation_error": 100 * abs(estimate - acc),
        }
        if input_reference is not None:
            counts = reference_histograms(batch)
            row["input_psi"] = max(psi(counts[k], input_reference[k]) for k in INPUT_STATS)
        if features is not None:
            row["feature_psi"] = feature_psi(norms, features)
        if "input_psi" in row and "feature_psi" in row:
            row["drift_psi"] = max(row["input_psi"], row["feature_psi"])
        results.setdefault(name, {})[str(level)] = row
    return results


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures a person compares between runs, from :func:`evaluate`'s metrics tree.

    What the evaluate stage declares as DVC metrics (``dvc metrics show``/``diff``, ``dvc exp
    show``); the whole tree, some 300 figures, stays in a file that is not. Test split, after
    temperature scaling unless the key says ``before_ts``; accuracy, ECE and AUROC in percent
    like the tree, NLL in nats, Brier score on [0, 2]. ``ood_auroc`` is the serving OOD score's
    (``ood_selection.chosen``) on each OOD set; ``shift_estimation_error`` the median distance,
    in points, between estimated and true accuracy over the corrupted rows of the shift study.
    """
    test = metrics["test"]
    chosen = metrics["ood_selection"]["chosen"]
    out: dict[str, Any] = {
        "accuracy": test["scaled"]["accuracy"],
        "ece": test["scaled"]["ece"],
        "ece_before_ts": test["raw"]["ece"],
        "adaptive_ece": test["scaled"]["adaptive_ece"],
        "nll": test["scaled"]["nll"],
        "nll_before_ts": test["raw"]["nll"],
        "brier": test["scaled"]["brier"],
        "temperature": metrics["temperature"]["temperature"],
        "ood_auroc": {name: ood["scaled"][chosen]["auroc"] for name, ood in metrics["ood"].items()},
    }
    if "ece_ci95" in test["scaled"]:  # the test set's bootstrap 95% interval of the ECE
        out["ece_ci95_low"], out["ece_ci95_high"] = test["scaled"]["ece_ci95"]
    if "ranking" in metrics:  # the paper's hypothesis, measured (pipeline.ranking_check)
        out["raw_above_mixed"] = metrics["ranking"]["raw_above_mixed"]
        out["ranking_kendall_tau"] = metrics["ranking"]["kendall_tau"]
    errors = [
        row["estimation_error"]
        for name, levels in metrics.get("shift", {}).items()
        if name != "clean"
        for row in levels.values()
    ]
    if errors:
        out["shift_estimation_error"] = float(np.median(errors))
    return out


# Bands of a shift-study row's drift PSI; the first is what the service's validity signal accepts
# (serving/prometheus/recording_rules.yml, rankcal:estimate_valid:5m).
VALIDITY_BANDS = ((0.0, 0.25), (0.25, 1.0), (1.0, 3.0), (3.0, float("inf")))


def validity_evidence(shift: dict[str, Any]) -> dict[str, dict[str, float]]:
    """How far estimated accuracy was from the truth, by band of drift PSI, over the shift rows.

    Per band ``"lo-hi"`` of ``drift_psi`` (``input_psi`` where the model has no feature
    statistic): the number of rows and the smallest, median and largest ``estimation_error``
    (points). The evidence behind the threshold of the service's validity signal; the clean row
    counts like any other. Empty bands are left out.
    """
    rows = [
        (row.get("drift_psi", row.get("input_psi")), row["estimation_error"])
        for levels in shift.values()
        for row in levels.values()
    ]
    bands: dict[str, dict[str, float]] = {}
    for lo, hi in VALIDITY_BANDS:
        errors = [e for p, e in rows if p is not None and lo <= p < hi]
        if errors:
            bands[f"{lo:g}-{hi:g}"] = {
                "rows": len(errors),
                "min_error": float(min(errors)),
                "median_error": float(np.median(errors)),
                "max_error": float(max(errors)),
            }
    return bands


def serving_reference(
    data: PreparedData,
    temperature: float,
    ood: OODChoice,
    reference_confidence: np.ndarray,
    cfg: EvaluateConfig,
) -> dict[str, Any]:
    """What the service needs besides the network: one JSON-ready mapping.

    ``reference_confidence`` is the calibrated top-1 confidence of the held-out images the
    service's confidence drift is measured against.
    """
    counts = bin_counts(reference_confidence, cfg.reference_edges)
    return {
        "dataset": data.dataset,
        "class_names": list(data.class_names),
        "image_shape": list(data.image_shape),
        "resize": data.resize,
        "mean": list(data.mean),
        "std": list(data.std),
        "normalize": data.normalize,
        "temperature": temperature,
        "ood_score": ood.name,
        "ood_threshold": ood.threshold,
        "ood_tpr": ood.tpr,
        "reference_confidence": {
            "bin_edges": [float(e) for e in cfg.reference_edges],
            "counts": counts.tolist(),
            "mean": float(reference_confidence.mean()),
        },
    }
