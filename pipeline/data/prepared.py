"""The download stage's on-disk product: ID splits, normalisation stats and OOD sets."""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.download import Checksums, Downloader, fetch_dataset
from pipeline.data.errors import DataError
from pipeline.data.ood import OOD_NAMES, load_ood
from pipeline.data.readers import ImageSet, load_id_dataset, num_classes
from pipeline.data.split import stratified_split, stratified_subset
from pipeline.io import atomic_path, write_json
from pipeline.preprocessing import channel_stats

logger = logging.getLogger(__name__)

_FILES = ("id.npz", "split.npz", "ood.npz", "meta.json")


# eq=False: field-wise equality and hashing are meaningless for numpy arrays.
@dataclass(frozen=True, eq=False)
class PreparedData:
    """An ID dataset with its train/validation split, normalisation stats and OOD sets.

    Attributes:
        dataset: ID dataset name.
        num_classes: Number of classes.
        train: The (possibly capped) training pool; split by ``train_idx``/``val_idx``.
        test: The test split.
        train_idx: Sorted indices into ``train`` used for fitting.
        val_idx: Sorted indices into ``train`` held out for validation.
        mean: Per-channel mean on the [0, 1] scale, from the ``train_idx`` images only.
        std: Per-channel standard deviation on the [0, 1] scale, likewise.
        ood: OOD images by set name, uint8 NHWC at :attr:`image_shape`.
    """

    dataset: str
    num_classes: int
    train: ImageSet
    test: ImageSet
    train_idx: np.ndarray
    val_idx: np.ndarray
    mean: list[float]
    std: list[float]
    ood: dict[str, np.ndarray]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The ID image shape ``(H, W, C)``."""
        height, width, channels = self.train.images.shape[1:]
        return int(height), int(width), int(channels)


def prepare_data(
    name: str,
    raw_dir: Path,
    *,
    val_fraction: float,
    seed: int,
    ood_names: Sequence[str],
    max_train: int | None = None,
    max_test: int | None = None,
    system_dir: Path | None = None,
    checksums: Checksums | None = None,
    downloader: Downloader | None = None,
    ood_count: int | None = None,
) -> PreparedData:
    """Fetch, read, cap, split and describe an ID dataset, and load its OOD sets.

    Args:
        name: ID dataset name.
        raw_dir: Raw-data root.
        val_fraction: Fraction of the training pool held out for validation.
        seed: Seed for capping, splitting and OOD sampling.
        ood_names: OOD sets to load (see :data:`pipeline.data.ood.OOD_NAMES`).
        max_train: Cap on the training pool (stratified subset), or ``None`` for all.
        max_test: Cap on the test split (stratified subset), or ``None`` for all.
        system_dir: Passed to :func:`fetch_dataset`.
        checksums: Passed to :func:`fetch_dataset`.
        downloader: Passed to :func:`fetch_dataset` and :func:`load_ood`.
        ood_count: Images per OOD set; defaults to the test-set size.

    Returns:
        The prepared data.
    """
    unknown = [n for n in ood_names if n not in OOD_NAMES]
    if unknown:
        raise ValueError(f"unknown OOD set(s) {unknown}; expected names from {list(OOD_NAMES)}")
    folder = fetch_dataset(
        name, raw_dir, system_dir=system_dir, checksums=checksums, downloader=downloader
    )
    train, test = load_id_dataset(name, folder)
    if max_train is not None:
        train = train.subset(stratified_subset(train.labels, max_train, seed))
    if max_test is not None:
        test = test.subset(stratified_subset(test.labels, max_test, seed))
    train_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
    mean, std = channel_stats(train.images[train_idx])
    height, width, channels = train.images.shape[1:]
    shape = (int(height), int(width), int(channels))
    count = len(test) if ood_count is None else ood_count
    ood = {
        ood_name: load_ood(
            ood_name, shape=shape, raw_dir=raw_dir, count=count, seed=seed, downloader=downloader
        )
        for ood_name in ood_names
    }
    logger.info(
        "%s: %d train, %d val, %d test; OOD %s",
        name,
        len(train_idx),
        len(val_idx),
        len(test),
        {k: len(v) for k, v in ood.items()},
    )
    return PreparedData(name, num_classes(name), train, test, train_idx, val_idx, mean, std, ood)


def _save_npz(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    # Writing through a handle stops numpy from appending a second .npz suffix.
    with atomic_path(dest) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)


def save_prepared(data: PreparedData, out_dir: Path) -> None:
    """Write ``id.npz``, ``split.npz``, ``ood.npz`` and ``meta.json`` into ``out_dir``.

    ``meta.json`` is written last, so its presence means the other files are complete.

    Args:
        data: What to save.
        out_dir: Destination folder, created if needed.
    """
    out_dir = Path(out_dir)
    _save_npz(
        out_dir / "id.npz",
        {
            "x_train": data.train.images,
            "y_train": data.train.labels,
            "x_test": data.test.images,
            "y_test": data.test.labels,
        },
    )
    _save_npz(out_dir / "split.npz", {"train_idx": data.train_idx, "val_idx": data.val_idx})
    _save_npz(out_dir / "ood.npz", data.ood)
    meta = {
        "dataset": data.dataset,
        "num_classes": data.num_classes,
        "image_shape": list(data.image_shape),
        "mean": data.mean,
        "std": data.std,
        "sizes": {
            "train_pool": len(data.train),
            "train": len(data.train_idx),
            "val": len(data.val_idx),
            "test": len(data.test),
            "ood": {k: len(v) for k, v in data.ood.items()},
        },
        "ood_names": list(data.ood),
    }
    write_json(out_dir / "meta.json", meta)


def _load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{path} lacks array(s) {missing}; it holds {npz.files}")
            return {k: npz[k] for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def load_prepared(out_dir: Path) -> PreparedData:
    """Read what :func:`save_prepared` wrote.

    Args:
        out_dir: Folder holding the prepared files.

    Returns:
        The prepared data.

    Raises:
        DataError: If a file or an entry is missing; the message names it.
    """
    out_dir = Path(out_dir)
    missing = [str(out_dir / f) for f in _FILES if not (out_dir / f).is_file()]
    if missing:
        raise DataError(f"prepared data incomplete, missing {missing}; rerun the download stage")
    with (out_dir / "meta.json").open(encoding="utf-8") as fh:
        meta = json.load(fh)
    try:
        dataset, n_classes = meta["dataset"], int(meta["num_classes"])
        mean, std, ood_names = meta["mean"], meta["std"], meta["ood_names"]
    except KeyError as exc:
        raise DataError(f"{out_dir / 'meta.json'} lacks key {exc}") from exc
    ids = _load_npz(out_dir / "id.npz", ("x_train", "y_train", "x_test", "y_test"))
    split = _load_npz(out_dir / "split.npz", ("train_idx", "val_idx"))
    ood = _load_npz(out_dir / "ood.npz", ood_names)
    return PreparedData(
        dataset=dataset,
        num_classes=n_classes,
        train=ImageSet(ids["x_train"], ids["y_train"]),
        test=ImageSet(ids["x_test"], ids["y_test"]),
        train_idx=split["train_idx"],
        val_idx=split["val_idx"],
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        ood=ood,
    )
