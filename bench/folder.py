"""Your-own-images throughput: folder preparation (decode + EXIF + resize) with 1 and 2
processes, and training images/s of a torchvision ResNet-18 at 64x64 against small_cnn at 28x28.

The folder is made here: ``--photos`` JPEG photos of ``--photo-size`` pixels (camera-like, with
noise so JPEG does not compress them to nothing), a tenth of them EXIF-rotated, in 4 classes.
Preparation is :func:`pipeline.data.folder.read_images`, the data stage's decoder; training is
one SGD step of :func:`pipeline.objective.compute_loss` with the ``loss`` section of params.

Usage: python bench/folder.py [--photos 200] [--photo-size 1600 1200] [--steps 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import load_section, read_params
from pipeline.data.folder import FolderOptions, read_images, scan_folder
from pipeline.images import read_image
from pipeline.models import build_model
from pipeline.objective import compute_loss

EXIF_ORIENTATION = 0x0112


def make_photos(root: Path, count: int, size: tuple[int, int]) -> None:
    """``count`` JPEGs of ``size`` (width, height) in 4 class folders; every 10th EXIF-rotated."""
    rng = np.random.default_rng(0)
    width, height = size
    # One smooth base picture per class, plus per-photo noise: realistic JPEG sizes and cost.
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        k = i % 4
        base = np.stack(
            [np.sin(xx / (40 + 10 * k)) * 90 + 128, yy * 200 / height, xx * 200 / width], axis=-1
        )
        pixels = base + rng.normal(0, 12, base.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        exif = Image.Exif()
        if i % 10 == 0:
            exif[EXIF_ORIENTATION] = 6
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
        folder = root / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"photo_{i:04d}.jpg").write_bytes(buffer.getvalue())


def prep_rate(root: Path, workers: int, size: tuple[int, int]) -> float:
    """Images per second of the data stage's decode + EXIF + resize over ``root``."""
    paths = [path for path, _ in scan_folder(root).files["all"]]
    options = FolderOptions(size, 3, "resize_shorter_then_center_crop", "error", workers)
    start = time.perf_counter()
    images, failures = read_images(paths, options, desc=f"{workers} process(es)")
    seconds = time.perf_counter() - start
    assert not failures and len(images) == len(paths)
    return len(paths) / seconds


def decode_rates(root: Path, size: tuple[int, int]) -> tuple[float, float]:
    """Images/s of read_image at full size and drafted for ``size`` (one process, no resize)."""
    payloads = [p.read_bytes() for p in sorted(root.rglob("*.jpg"))]
    rates = []
    for draft in (None, size):
        start = time.perf_counter()
        for data in payloads:
            read_image(data, max_pixels=1 << 28, draft_for=draft)
        rates.append(len(payloads) / (time.perf_counter() - start))
    return rates[0], rates[1]


def train_rate(
    arch: str, shape: tuple[int, int, int], loss_cfg: object, steps: int, batch: int
) -> float:
    """Training images per second: median step time of ``steps`` SGD steps (after 2 warm-up)."""
    torch.manual_seed(0)
    channels, height, width = shape
    model = build_model(arch, num_classes=10, in_channels=channels)
    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, height, width).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss, _ = compute_loss(model, x, y, loss_cfg, rng)  # type: ignore[arg-type]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--photo-size", type=int, nargs=2, default=(1600, 1200), metavar=("W", "H"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        make_photos(root, args.photos, tuple(args.photo_size))
        megabytes = sum(f.stat().st_size for f in root.rglob("*.jpg")) / 1e6
        print(
            f"folder: {args.photos} JPEGs {args.photo_size[0]}x{args.photo_size[1]}, "
            f"{megabytes:.1f} MB"
        )
        rates = {w: prep_rate(root, w, (64, 64)) for w in (1, 2)}
        full, drafted = decode_rates(root, (64, 64))
    print("\n| preparation (decode + EXIF + resize to 64x64) | images/s |\n|---|---|")
    for workers, rate in rates.items():
        print(f"| {workers} process(es) | {rate:.1f} |")
    print(f"\n2 processes / 1: {rates[2] / rates[1]:.2f}x")
    print(
        f"JPEG decode alone, 1 process: full size {full:.1f}/s, drafted for 64x64 "
        f"{drafted:.1f}/s ({drafted / full:.1f}x)"
    )

    base = load_section(read_params(args.params), "loss")
    print(
        f"\n| training (batch {args.batch_size}, CPU, {torch.get_num_threads()} threads) "
        "| images/s |\n|---|---|"
    )
    results = {}
    for name in ("ce", base.name):
        loss_cfg = dataclasses.replace(base, name=name)
        for arch, shape in (("small_cnn", (1, 28, 28)), ("tv:resnet18", (3, 64, 64))):
            rate = train_rate(arch, shape, loss_cfg, args.steps, args.batch_size)
            results[name, arch] = rate
            size = f"{shape[1]}x{shape[2]}x{shape[0]}"
            print(f"| {arch} at {size}, loss {name} | {rate:.1f} |")
    for name in ("ce", base.name):
        ratio = results[name, "small_cnn"] / results[name, "tv:resnet18"]
        print(f"small_cnn / tv:resnet18 ({name}): {ratio:.1f}x")


if __name__ == "__main__":
    main()
