"""A user's own image folder as a dataset: torchvision's ``ImageFolder`` layout, decoded in
parallel with the service's image functions.

Layout: ``root/<class name>/<image files>`` (files found at any depth below the class folder,
classes sorted by name, as ``ImageFolder``), or ``root/train/<class>/...``,
``root/test/<class>/...`` and optionally ``root/val/<class>/...`` to give the splits. Files whose
extension is not one of :data:`pipeline.images.IMAGE_EXTENSIONS` are ignored, as are hidden files
and folders. Every image goes through :func:`pipeline.images.load_image`, the function the
service applies to an uploaded photo.

torchvision's ``ImageFolder`` is not used: it decodes lazily per sample with torch transforms,
while the data stage decodes once, in several processes, with the torch-free functions serving
shares.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pipeline.data.errors import DataError
from pipeline.images import IMAGE_EXTENSIONS, ImageReadError, load_image

logger = logging.getLogger(__name__)

SPLIT_DIRS = ("train", "val", "test")
_SHOWN = 5  # file names quoted in an error message
_CHUNK = 16  # files per task sent to a decoding process


@dataclass(frozen=True)
class FolderOptions:
    """How a folder's images become arrays.

    Attributes:
        image_size: ``(height, width)`` of every image after fitting.
        channels: 1 (grey) or 3 (RGB).
        resize: A :data:`pipeline.images.RESIZE_POLICIES` entry.
        on_error: ``error`` stops at unreadable files; ``skip`` leaves them out with a warning.
        workers: Decoding processes; ``None`` is one per CPU core.
    """

    image_size: tuple[int, int]
    channels: int
    resize: str
    on_error: Literal["error", "skip"]
    workers: int | None = None


@dataclass(frozen=True)
class FolderLayout:
    """What :func:`scan_folder` found.

    Attributes:
        root: The folder.
        class_names: Class folder names, sorted; label ``k`` is ``class_names[k]``.
        files: Image files with their labels, per split: ``{"all": ...}`` for a flat folder, or
            ``train``, ``test`` and possibly ``val``.
        ignored: Files left out because their extension is no image format's.
    """

    root: Path
    class_names: list[str]
    files: dict[str, list[tuple[Path, int]]]
    ignored: int


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files below ``folder`` at any depth, sorted, and the count of other files."""
    images, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                images.append(Path(dirpath) / name)
            else:
                ignored += 1
    return images, ignored


def scan_folder(root: Path) -> FolderLayout:
    """Find the classes and image files of a dataset folder.

    Args:
        root: ``root/<class>/...``, or ``root/{train,val,test}/<class>/...`` (``val`` optional).

    Returns:
        The layout.

    Raises:
        DataError: If ``root`` is missing or not a folder, has fewer than two classes, or a
            split names a class the training split lacks; the message names the path.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data.root {root} does not exist: point it at your image folder")
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder")
    split_dirs = {s: root / s for s in SPLIT_DIRS if (root / s).is_dir()}
    given = {"train", "test"} <= set(split_dirs)
    tops = split_dirs if given else {"all": root}
    per_split = {split: _class_dirs(folder) for split, folder in tops.items()}
    names = sorted({d.name for dirs in per_split.values() for d in dirs})
    first = "train" if given else "all"
    missing = sorted(set(names) - {d.name for d in per_split[first]})
    if missing:
        raise DataError(f"class folder(s) {missing} are in {root} but not in {tops[first]}")
    if len(names) < 2:
        found = f"only {names}" if names else "none"
        raise DataError(
            f"{tops[first]} needs one sub-folder per class, at least two; found {found} "
            "(layout: <root>/<class name>/<image files>)"
        )
    label = {name: k for k, name in enumerate(names)}
    files: dict[str, list[tuple[Path, int]]] = {}
    ignored = 0
    for split, dirs in per_split.items():
        files[split] = []
        for class_dir in dirs:
            found, other = image_files(class_dir)
            files[split] += [(path, label[class_dir.name]) for path in found]
            ignored += other
    if ignored:
        logger.info("%s: ignored %d file(s) that are not images (by extension)", root, ignored)
    return FolderLayout(root, names, files, ignored)


def _decode(path: Path, options: FolderOptions) -> np.ndarray | str:
    """One file's fitted pixels, or why it could not be read (runs in a worker process)."""
    try:
        data = path.read_bytes()
        return load_image(
            data,
            size=options.image_size,
            channels=options.channels,
            policy=options.resize,
            max_pixels=Image.MAX_IMAGE_PIXELS or 1 << 30,
        )
    except (OSError, ImageReadError) as err:
        return str(err)


def allocate(count: int, options: FolderOptions, file: Path | None = None) -> np.ndarray:
    """Room for ``count`` fitted images: in memory, or a ``.npy`` file mapped at ``file``."""
    shape = (count, *options.image_size, options.channels)
    if file is None:
        return np.empty(shape, dtype=np.uint8)
    return np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=shape)


def read_images(
    paths: Sequence[Path],
    options: FolderOptions,
    *,
    desc: str = "decoding",
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Decode and fit ``paths`` in parallel, with a progress bar.

    Args:
        paths: Image files.
        options: Size, channels, resize policy, error policy and process count.
        desc: Progress bar label.
        out: Where to write, ``(len(paths), H, W, C)`` uint8 (e.g. from :func:`allocate`, a
            mapped file for a dataset larger than memory); a new array when ``None``.

    Returns:
        ``(images, failures)``: the first rows of ``out``, holding the readable files in
        ``paths`` order, and ``(path, reason)`` for each unreadable one. ``on_error`` is the
        caller's to apply.
    """
    images = allocate(len(paths), options) if out is None else out
    failures: list[tuple[Path, str]] = []
    kept = 0
    workers = options.workers or os.cpu_count() or 1
    decode = partial(_decode, options=options)
    if workers == 1 or len(paths) < 2 * _CHUNK:
        results = map(decode, paths)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(decode, paths, chunksize=_CHUNK)
    try:
        for path, out in tqdm(
            zip(paths, results, strict=True), total=len(paths), desc=desc, disable=None
        ):
            if isinstance(out, str):
                failures.append((path, out))
            else:
                images[kept] = out
                kept += 1
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return images[:kept], failures


def describe_failures(failures: Sequence[tuple[Path, str]], root: Path) -> str:
    """``N unreadable image file(s) under ROOT: a (why), b (why), ... and K more``."""
    shown = "; ".join(f"{path} ({why})" for path, why in failures[:_SHOWN])
    more = f"; and {len(failures) - _SHOWN} more" if len(failures) > _SHOWN else ""
    return f"{len(failures)} unreadable image file(s) under {root}: {shown}{more}"


def load_split(
    files: Sequence[tuple[Path, int]],
    options: FolderOptions,
    root: Path,
    desc: str,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one split's files; apply ``options.on_error`` to the unreadable ones.

    Returns:
        ``(images, labels, readable)``: uint8 ``(N, H, W, C)`` and int64 ``(N,)`` of the
        readable files, and a bool mask over ``files`` of which those are.

    Raises:
        DataError: With ``on_error: error``, if any file is unreadable (naming the first few
            and the count).
    """
    paths = [path for path, _ in files]
    images, failures = read_images(paths, options, desc=desc, out=out)
    message = describe_failures(failures, root) if failures else ""
    if failures and options.on_error == "error":
        raise DataError(f"{message}. Fix or remove them, or set data.on_error: skip")
    if failures:
        logger.warning("skipping %s", message)
    bad = {path for path, _ in failures}
    readable = np.array([path not in bad for path, _ in files], dtype=bool)
    labels = np.array([label for _, label in files], dtype=np.int64)[readable]
    return images, labels, readable


def check_class_sizes(labels: np.ndarray, class_names: Sequence[str], where: Path) -> None:
    """Every class needs at least two images (one to train on, one to test or validate)."""
    counts = np.bincount(labels, minlength=len(class_names))
    small = {class_names[k]: int(c) for k, c in enumerate(counts) if c < 2}
    if small:
        raise DataError(
            f"class(es) with fewer than 2 readable images under {where}: {small}; "
            "add images or remove the class folder"
        )


def read_image_tree(root: Path, options: FolderOptions) -> np.ndarray:
    """Every image file below ``root`` (any layout), fitted: an OOD set from the user's photos.

    Raises:
        DataError: If ``root`` is missing or holds no image (or, with ``on_error: error``, an
            unreadable one).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"OOD folder {root} does not exist or is not a folder")
    paths, _ = image_files(root)
    if not paths:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"OOD folder {root} holds no image file ({kinds})")
    return load_split([(p, 0) for p in paths], options, root, desc=f"OOD {root.name}")[0]
