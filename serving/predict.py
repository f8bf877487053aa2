"""Score image files offline with an exported model: ``rankcal predict MODEL IMAGES...``.

The same decoding (:func:`serving.images.decode_image`), fitting and ONNX Runtime predictor as
the HTTP service, without a server: calibrated probabilities, confidence, entropy and the OOD
flag per file, a CSV, and a summary line (mean calibrated confidence is the estimated accuracy
of the batch). A file that cannot be read gets its error in its row and does not stop the run.

From Python::

    from serving.predict import predict_files
    rows = predict_files("models/model.onnx", ["images/test"])
    print(rows[0]["class_name"], rows[0]["confidence"])
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.data.folder import image_files
from pipeline.io import atomic_path
from serving.images import InputError, decode_image
from serving.predictor import CPU, ModelFileError, Predictor, execution_providers

# As the service's default (params.yaml serve.max_image_pixels): larger images are refused.
MAX_PIXELS = 16_777_216
FIELDS = ("file", "class_index", "class_name", "confidence", "entropy", "is_ood", "error")


def expand(inputs: Iterable[Path | str]) -> list[Path]:
    """Files as given, and the image files below each folder (sorted, at any depth).

    Raises:
        FileNotFoundError: For an input that does not exist.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += image_files(item)[0]
        elif item.exists():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item} does not exist")
    return paths


def predict_files(
    model: Path | str,
    inputs: Iterable[Path | str],
    *,
    batch_size: int = 64,
    progress: bool = False,
    cpu_only: bool = False,
) -> list[dict[str, Any]]:
    """One row per image file: the service's answer fields plus ``file``, ``error`` (empty when
    scored) and ``probabilities`` (calibrated, one per class).

    Raises:
        ModelFileError: If ``model`` cannot be served.
        FileNotFoundError: For an input that does not exist.
    """
    providers = [CPU] if cpu_only else execution_providers()
    predictor = Predictor(Path(model), top_k=1, providers=providers)
    return score_files(predictor, expand(inputs), batch_size=batch_size, progress=progress)


def score_files(
    predictor: Predictor, paths: Sequence[Path], *, batch_size: int, progress: bool = False
) -> list[dict[str, Any]]:
    """:func:`predict_files` with the predictor and the file list already made."""
    height, width, _ = predictor.image_shape
    rows: list[dict[str, Any]] = []
    for start in tqdm(
        range(0, len(paths), batch_size), desc="predict", unit="batch", disable=not progress
    ):
        images, scored = [], []
        for path in paths[start : start + batch_size]:
            try:
                data = path.read_bytes()
                # As the service decodes an upload (a JPEG at the same reduced scale).
                images.append(decode_image(data, max_pixels=MAX_PIXELS, draft_for=(height, width)))
                scored.append(path)
            except (InputError, OSError) as err:
                reason = str(err).removeprefix("the body is refused: ")
                rows.append({"file": str(path), "error": reason})
        if not images:
            continue
        out = predictor.predict(predictor.conform(images), batch_size=batch_size)
        for path, record, probs in zip(
            scored, predictor.records(out), out.probabilities, strict=True
        ):
            record.pop("top_k")
            rows.append({"file": str(path), "error": "", **record, "probabilities": probs.tolist()})
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(rows, key=lambda r: order[r["file"]])


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """One line: files scored and failed, mean confidence (estimated accuracy), OOD share."""
    scored = [r for r in rows if not r["error"]]
    failed = len(rows) - len(scored)
    if not scored:
        return f"scored 0 of {len(rows)} files ({failed} could not be read)"
    confidence = float(np.mean([r["confidence"] for r in scored]))
    ood = float(np.mean([r["is_ood"] for r in scored]))
    return (
        f"scored {len(scored)} of {len(rows)} files ({failed} could not be read): mean "
        f"calibrated confidence {confidence:.1%} (the estimated accuracy), {ood:.1%} flagged OOD"
    )


def write_csv(rows: Sequence[dict[str, Any]], class_names: Sequence[str], out: Path) -> None:
    """The rows as CSV, one ``p_<class>`` column per class; written whole or not at all."""
    header = [*FIELDS, *(f"p_{name}" for name in class_names)]
    with atomic_path(out) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            probs = row.get("probabilities") or [""] * len(class_names)
            writer.writerow([row.get(k, "") for k in FIELDS] + list(probs))


def main(argv: Sequence[str] | None = None) -> int:
    """``rankcal predict``: score files and folders, write a CSV, print a summary."""
    p = argparse.ArgumentParser(prog="rankcal predict", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="the exported model (models/model.onnx)")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and folders")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cpu", action="store_true", help="ONNX Runtime's CPU provider only")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    try:
        providers = [CPU] if args.cpu else execution_providers()
        predictor = Predictor(args.model, top_k=1, providers=providers)
        paths = expand(args.inputs)
    except (ModelFileError, FileNotFoundError) as err:
        print(f"rankcal predict: {err}", file=sys.stderr)
        return 2
    rows = score_files(predictor, paths, batch_size=args.batch_size, progress=True)
    write_csv(rows, predictor.card.class_names, args.out)
    print(f"{summary(rows)}; wrote {args.out}", file=sys.stderr)
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """The ``rankcal`` console script: ``rankcal predict ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "predict":
        print("usage: rankcal predict MODEL IMAGES... [--out predictions.csv]", file=sys.stderr)
        return 2
    return main(args[1:])


if __name__ == "__main__":
    sys.exit(cli())
