"""A seeded mutation fuzz of valid image files against the real service: never a 5xx.

Valid PNG, JPEG, GIF, TIFF, BMP and WebP files are damaged the way files get damaged (bytes
flipped, cut short, bytes inserted, a run of bytes repeated, header fields overwritten) and
sent to ``/classify``. Each answer must be a prediction (the damage was harmless) or a 4xx with
``{"error", "reason"}``; the refusal counters must grow by exactly the refusals seen, and the
service must answer a valid image afterwards. Count and time are bounded for CI.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serving.conftest import (
    ExportedModel,
    Metrics,
    RunningService,
    quadrant_images,
    serving,
)

FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP")
# 60 per format in CI (about 6 s); RANKCAL_FUZZ_MUTANTS=2000 for a long run by hand.
MUTANTS_PER_FORMAT = int(os.environ.get("RANKCAL_FUZZ_MUTANTS", "60"))


def valid_file(fmt: str, seed: int) -> bytes:
    """A 24x20 RGB image with structure (quadrant and noise) saved as ``fmt``."""
    grey = quadrant_images(1, seed=seed, size=24)[0][0][:20, :, 0]
    rgb = np.stack([grey, np.roll(grey, 3, axis=1), 255 - grey], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt)
    return buffer.getvalue()


def mutants(data: bytes, count: int, rng: np.random.Generator) -> Iterator[bytes]:
    """``count`` damaged copies of ``data``: a file's first 64 bytes (its header) are damaged
    as often as the rest, since decoders trust them most."""
    for i in range(count):
        buf = bytearray(data)
        kind = i % 5
        if kind == 0:  # flip a few bytes anywhere
            for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 9))):
                buf[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # cut short
            buf = buf[: int(rng.integers(1, len(buf)))]
        elif kind == 2:  # insert random bytes
            pos = int(rng.integers(0, len(buf)))
            buf[pos:pos] = rng.integers(
                0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8
            ).tobytes()
        elif kind == 3:  # repeat a run of bytes
            start = int(rng.integers(0, len(buf)))
            run = buf[start : start + int(rng.integers(1, 256))]
            buf[start:start] = run * int(rng.integers(1, 4))
        else:  # overwrite a 4-byte field in the header with an extreme value
            pos = int(rng.integers(0, max(1, min(64, len(buf) - 4))))
            buf[pos : pos + 4] = bytes(
                rng.choice(
                    [
                        b"\xff\xff\xff\xff",
                        b"\x00\x00\x00\x00",
                        b"\x7f\xff\xff\xff",
                        b"\x80\x00\x00\x00",
                    ]
                )
            )
        yield bytes(buf)


@pytest.fixture(scope="module")
def fuzz_service(
    exported_model: ExportedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    tmp = tmp_path_factory.mktemp("fuzz")
    limits = {"workers": 1, "max_latency_ms": 10_000, "max_image_pixels": 1 << 20}
    with serving(exported_model.path, tmp, **limits) as running:
        yield running


@pytest.mark.slow
def test_damaged_image_files_get_a_prediction_or_a_4xx(fuzz_service: RunningService) -> None:
    url = fuzz_service.url
    before = Metrics.scrape(url)
    refusals: Counter[str] = Counter()
    accepted = 0
    rng = np.random.default_rng(20261129)
    with httpx.Client(base_url=url, timeout=30) as client:
        for k, fmt in enumerate(FORMATS):
            original = valid_file(fmt, seed=k)
            assert client.post("/classify", content=original).status_code == 200, fmt
            for i, body in enumerate(mutants(original, MUTANTS_PER_FORMAT, rng)):
                response = client.post(
                    "/classify", content=body, headers={"Content-Type": "image/" + fmt.lower()}
                )
                where = f"{fmt} mutant {i} ({len(body)} bytes)"
                assert response.status_code < 500, f"{where}: {response.text}"
                if response.status_code == 200:
                    accepted += 1
                    assert 0.0 <= response.json()["confidence"] <= 1.0, where
                    continue
                assert 400 <= response.status_code < 500, where
                error = response.json()
                assert set(error) == {"error", "reason"}, where
                refusals[error["reason"]] += 1
        assert client.post("/classify", content=valid_file("PNG", seed=99)).status_code == 200
    after = Metrics.scrape(url)
    for reason, count in refusals.items():
        grew = after.get("rankcal_rejected_requests_total", reason=reason) - before.get(
            "rankcal_rejected_requests_total", reason=reason
        )
        assert grew == count, reason
    total = len(FORMATS) * MUTANTS_PER_FORMAT
    assert accepted + sum(refusals.values()) == total
    assert sum(refusals.values()) > total // 4  # the damage was real: many files were refused
