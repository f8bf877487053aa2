"""Input drift with the feature norm, from outside: false alarms on clean draws, rotations live.

Two measurements behind ``docs/serving.md`` ("The feature norm"), on the exported model:

1. Offline, no server: for draws of n test images (n = 100, 200, 500), the largest PSI of the
   five input statistics (four of the pixels, the feature norm's rank) less the sampling term
   (k - 1)(1/n + 1/m) (``pipeline.drift.sampling_psi``: k bins the reference fills, m images
   it binned), what ``rankcal:input_psi_excess:5m`` computes: how often it reaches the
   validity signal's 0.25 on clean traffic, with the pixel statistics alone and with all five.
2. Live: a real ``bentoml serve`` gets test images, then the same images rotated (the shift
   study's corruption, severities 3 to 5), each as one ``.npy`` batch to ``/classify_batch``; the
   PSI per statistic comes from the scraped ``rankcal_input_bin_total`` deltas; the table shows
   true accuracy, the estimate, the PSIs, the OOD share and whether the estimate stays valid.

Usage (after ``make repro``)::

    python bench/drift_replay.py [--model models/model.onnx] [--images 300] [--draws 1000]

The report (markdown) goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from prometheus_client.parser import text_string_to_metric_families

if not __package__:  # run as ``python bench/drift_replay.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.servers import ROOT, SERVICE, free_port, start_server, wait_ready, write_params
from pipeline.data import load_prepared
from pipeline.data.corruptions import corrupt
from pipeline.data.split import stratified_subset
from pipeline.drift import bin_counts, psi, psi_excess, sampling_psi
from pipeline.feature_norm import STATISTIC as FEATURE
from pipeline.feature_norm import norm_rank
from pipeline.input_stats import EDGES, STATISTICS, input_statistics
from pipeline.model_card import METADATA_KEY, ModelCard
from pipeline.preprocessing import to_model_input
from serving.npy import npy_bytes

VALID_BELOW = 0.25  # rankcal:estimate_valid:5m's threshold on the excess PSI
OOD_SHARE = 0.2  # ... and on the OOD share


def offline_false_alarms(model: Path, images: np.ndarray, draws: int) -> list[str]:
    """Table rows: share of clean draws whose excess PSI reaches 0.25, four vs five statistics."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    card = ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    if card.feature_reference is None or card.input_reference is None:
        raise SystemExit(f"{model} has no input or feature reference: export it again")
    norms = np.concatenate(
        [
            session.run(["feature_norm"], {"images": to_model_input(b, card.mean, card.std)})[0]
            for b in np.array_split(images, max(1, len(images) // 1000))
        ]
    )
    stats = input_statistics(images) | {FEATURE: norm_rank(norms, card.feature_reference.quantiles)}
    refs = {name: card.input_reference.counts(name) for name in STATISTICS}
    refs[FEATURE] = card.feature_reference.counts
    rng = np.random.default_rng(0)
    rows = []
    for n in (100, 200, 500):
        four, five = [], []
        for _ in range(draws):
            idx = rng.choice(len(images), n, replace=False)
            by = {k: psi_excess(bin_counts(stats[k][idx], EDGES), refs[k]) for k in refs}
            four.append(max(v for k, v in by.items() if k != FEATURE))
            five.append(max(by.values()))
        f4, f5 = np.array(four), np.array(five)
        rows.append(
            f"| {n} | {100 * (f4 >= VALID_BELOW).mean():.1f}% | {np.percentile(f4, 95):.3f} | "
            f"{100 * (f5 >= VALID_BELOW).mean():.1f}% | {np.percentile(f5, 95):.3f} |"
        )
    return rows


def live_rotations(model: Path, images: np.ndarray, labels: np.ndarray) -> list[str]:
    """Table rows: each stream sent to a real service, read back from its /metrics."""
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        dest = Path(folder) / "params.yaml"
        params = write_params(ROOT / "params.yaml", dest, port=port, workers=1)
        server = start_server("service", SERVICE, model, params, port)
        try:
            wait_ready(server)
            return [_stream_row(server.url, *stream, labels) for stream in _streams(images)]
        finally:
            server.stop()


def _streams(images: np.ndarray) -> list[tuple[str, np.ndarray]]:
    streams = [("test images", images)]
    for level in (3, 4, 5):
        streams.append(
            (f"rotated, severity {level}", corrupt(images, "rotation", level, seed=level))
        )
    return streams


def _stream_row(url: str, name: str, batch: np.ndarray, labels: np.ndarray) -> str:
    """Send ``batch`` as one .npy request; its row from the answers and the /metrics deltas."""
    before, reference, sizes = _scrape(url)
    answer = httpx.post(
        f"{url}/classify_batch",
        content=npy_bytes(batch),
        headers={"Content-Type": "application/x-npy"},
        timeout=120,
    )
    answer.raise_for_status()
    after, _, _ = _scrape(url)
    preds = answer.json()["predictions"]
    accuracy = np.mean([p["class_index"] == y for p, y in zip(preds, labels, strict=True)])
    estimate = np.mean([p["confidence"] for p in preds])
    ood = np.mean([p["is_ood"] for p in preds])
    by, excesses = {}, []
    for statistic in sorted({s for s, _ in reference}):
        bins = sorted((b for s, b in reference if s == statistic), key=float)
        live = [after[(statistic, b)] - before.get((statistic, b), 0.0) for b in bins]
        shares = [reference[(statistic, b)] for b in bins]
        by[statistic] = psi(live, shares)
        # The reference's counts, back from its shares and size, for the sampling term.
        excesses.append(
            by[statistic] - sampling_psi(np.multiply(shares, sizes[statistic]), len(batch))
        )
    pixels = max(v for k, v in by.items() if k != FEATURE)
    excess = max(excesses)
    valid = excess < VALID_BELOW and ood < OOD_SHARE
    return (
        f"| {name} | {100 * accuracy:.1f} | {100 * estimate:.1f} | {pixels:.3f} | "
        f"{by.get(FEATURE, float('nan')):.3f} | {excess:.3f} | {100 * ood:.1f}% | "
        f"{'yes' if valid else 'no'} |"
    )


def _scrape(url: str) -> tuple[dict, dict, dict]:
    counts, reference, sizes = {}, {}, {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            key = (s.labels.get("statistic"), s.labels.get("bin"))
            if s.name == "rankcal_input_bin_total":
                counts[key] = s.value
            elif s.name == "rankcal_input_reference_ratio":
                reference[key] = s.value
            elif s.name == "rankcal_input_reference_images":
                sizes[key[0]] = s.value
    return counts, reference, sizes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "model.onnx")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    p.add_argument("--images", type=int, default=300, help="test images per live stream")
    p.add_argument("--draws", type=int, default=1000, help="clean draws per size, offline")
    args = p.parse_args(argv)
    test = load_prepared(args.data).test
    keep = stratified_subset(test.labels, args.images, seed=0)
    print("## Input drift with the feature norm (`bench/drift_replay.py`)\n")
    print(f"Clean draws of test images ({args.draws} per size): excess PSI >= 0.25\n")
    print("| n | four pixel statistics | their p95 | with the feature norm | its p95 |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(offline_false_alarms(args.model, np.asarray(test.images), args.draws)))
    print(f"\nLive, {args.images} images per stream, one .npy batch each:\n")
    print(
        "| stream | true accuracy | estimate | pixel PSI (largest) | feature-norm PSI | excess "
        "| OOD share | valid |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    rows = live_rotations(args.model, np.asarray(test.images[keep]), test.labels[keep])
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
