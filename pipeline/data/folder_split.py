"""A scanned image folder split into the training pool and the test set, then decoded.

The split is made on the labels the scan found, before anything is decoded, so every image is
decoded once, straight into its split's array: in memory, or, given a scratch folder, into a
mapped ``.npy`` file, so that a folder larger than memory is prepared a chunk of files at a
time. The caps (``data.max_train``/``data.max_test``) are applied before decoding too: capped
images are never decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.errors import DataError
from pipeline.data.folder import FolderOptions, allocate, check_class_sizes, load_split, scan_folder
from pipeline.data.readers import ImageSet
from pipeline.data.split import stratified_split, stratified_subset


@dataclass(frozen=True, eq=False)
class FolderSplits:
    """A folder dataset's decoded splits.

    Attributes:
        class_names: Class folder names in label order.
        pool: The training pool (training and validation images).
        test: The test images.
        val_idx: Sorted indices into ``pool`` of a ``val/`` folder's images, or ``None`` when
            validation is to be split off the pool like any dataset's.
    """

    class_names: list[str]
    pool: ImageSet
    test: ImageSet
    val_idx: np.ndarray | None


@dataclass(frozen=True)
class SplitRule:
    """How a flat folder is split and capped.

    Attributes:
        test_fraction: Stratified share of each class held out for testing (flat folders).
        seed: Seeds the split and the caps.
        max_train: Cap on the training pool (stratified subset), or ``None``.
        max_test: Cap on the test set (stratified subset), or ``None``.
    """

    test_fraction: float
    seed: int
    max_train: int | None
    max_test: int | None


Files = list[tuple[Path, int]]


def _cap(files: Files, cap: int | None, seed: int) -> np.ndarray:
    """Positions of ``files`` kept by a stratified cap (all of them without one)."""
    if cap is None or not files:
        return np.arange(len(files))
    return stratified_subset(np.array([label for _, label in files]), cap, seed)


def _decode(
    files: Files,
    options: FolderOptions,
    root: Path,
    name: str,
    scratch: Path | None,
) -> tuple[ImageSet, np.ndarray]:
    out = allocate(len(files), options, None if scratch is None else scratch / f"{name}.npy")
    images, labels, readable = load_split(files, options, root, f"decoding {name}", out=out)
    if len(images) == 0:
        raise DataError(f"{root} holds no readable image for the {name} split")
    return ImageSet(images, labels), readable


def split_folder(
    root: Path, options: FolderOptions, rule: SplitRule, scratch: Path | None = None
) -> FolderSplits:
    """Scan ``root``, split it, and decode each split.

    A flat folder (``root/<class>/...``) gets the seeded, stratified test split of
    ``rule.test_fraction``; one with ``train/`` and ``test/`` (and optionally ``val/``) keeps
    them. The caps apply to the pool (train and val together) and to the test set.

    Args:
        root: The dataset folder.
        options: How images are decoded and fitted, and what unreadable files do.
        rule: Test fraction, seed and caps.
        scratch: Folder for the mapped arrays (``pool.npy``, ``test.npy``); ``None`` decodes
            into memory.

    Returns:
        The decoded splits.

    Raises:
        DataError: On a bad layout, unreadable files (``on_error: error``), a class with fewer
            than two readable images, or a split left without images.
    """
    layout = scan_folder(root)
    names = layout.class_names
    if "all" in layout.files:
        files = layout.files["all"]
        check_class_sizes(np.array([label for _, label in files]), names, root)
        pool_idx, test_idx = stratified_split(
            np.array([label for _, label in files]), rule.test_fraction, rule.seed
        )
        pool_files: Files = [files[i] for i in pool_idx]
        test_files: Files = [files[i] for i in test_idx]
        is_val = np.zeros(len(pool_files), dtype=bool)
        test_root = root
    else:
        pool_files = layout.files["train"] + layout.files.get("val", [])
        is_val = np.arange(len(pool_files)) >= len(layout.files["train"])
        test_files, test_root = layout.files["test"], root / "test"
    keep = _cap(pool_files, rule.max_train, rule.seed)
    pool_files, is_val = [pool_files[i] for i in keep], is_val[keep]
    test_files = [test_files[i] for i in _cap(test_files, rule.max_test, rule.seed)]
    pool, readable = _decode(pool_files, options, root, "train", scratch)
    test, _ = _decode(test_files, options, test_root, "test", scratch)
    check_class_sizes(np.concatenate([pool.labels, test.labels]), names, root)
    missing = sorted(set(range(len(names))) - set(pool.labels.tolist()))
    if missing:
        raise DataError(
            f"no readable training image of class(es) {[names[k] for k in missing]} in {root}"
        )
    val_idx = np.flatnonzero(is_val[readable]).astype(np.int64)
    # No (readable) val/ image: validation is split off the pool as for any dataset.
    return FolderSplits(names, pool, test, val_idx if len(val_idx) else None)
