"""A tiny client for the service: ``python -m serving.client IMAGE [IMAGE ...] [--url URL]``.

Each image file is posted to ``/classify`` as it is; the predictions are printed as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving.npy import MEDIA_TYPE, npy_bytes

DEFAULT_URL = "http://localhost:3000"


def classify(path: Path, url: str = DEFAULT_URL, timeout: float = 30.0) -> dict[str, Any]:
    """Classify one image file; raises ``httpx.HTTPStatusError`` on a refusal."""
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    response = httpx.post(
        f"{url}/classify",
        content=path.read_bytes(),
        headers={"Content-Type": media_type},
        timeout=timeout,
    )
    response.raise_for_status()
    return response.json()


def classify_batch(
    images: np.ndarray, url: str = DEFAULT_URL, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Classify uint8 ``(N, H, W)`` or ``(N, H, W, C)`` images already at the model's size.

    Sent as a ``.npy`` body: the array's bytes, no JSON lists to build or parse.
    """
    response = httpx.post(
        f"{url}/classify_batch",
        content=npy_bytes(np.asarray(images)),
        headers={"Content-Type": MEDIA_TYPE},
        timeout=timeout,
    )
    response.raise_for_status()
    return response.json()["predictions"]


def send_feedback(
    labels: Sequence[tuple[str, int | str]], url: str = DEFAULT_URL, timeout: float = 30.0
) -> int:
    """Send delayed true labels as ``(prediction_id, label)`` pairs (label: class index or
    name); returns how many were counted (all). Raises ``httpx.HTTPStatusError`` on a refusal,
    whose JSON body lists every refused item; then none was counted."""
    items = [{"prediction_id": i, "label": label} for i, label in labels]
    response = httpx.post(f"{url}/feedback", json={"feedback": items}, timeout=timeout)
    response.raise_for_status()
    return int(response.json()["counted"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    args = parser.parse_args(argv)
    for path in args.images:
        print(json.dumps({"file": str(path), **classify(path, args.url)}))


if __name__ == "__main__":
    main()
