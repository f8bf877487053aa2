"""The download stage's on-disk product: ID splits, normalisation stats and OOD sets."""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.config import FOLDER, FOLDER_OOD_PREFIX, DataConfig
from pipeline.data.classes import class_names
from pipeline.data.download import Checksums, Downloader, fetch_dataset
from pipeline.data.errors import DataError
from pipeline.data.folder import FolderOptions, read_image_tree
from pipeline.data.folder_split import SplitRule, split_folder
from pipeline.data.ood import OOD_NAMES, load_ood
from pipeline.data.readers import ImageSet, load_id_dataset, num_classes
from pipeline.data.split import stratified_split, stratified_subset
from pipeline.io import atomic_path, write_json
from pipeline.preprocessing import input_scaling, match_channels

logger = logging.getLogger(__name__)

_FILES = ("x_train.npy", "x_test.npy", "labels.npz", "split.npz", "ood.npz", "meta.json")


# eq=False: field-wise equality and hashing are meaningless for numpy arrays.
@dataclass(frozen=True, eq=False)
class PreparedData:
    """An ID dataset with its train/validation split, normalisation stats and OOD sets.

    Attributes:
        dataset: ID dataset name (``folder`` for a user's image folder).
        class_names: Class names in label order (a folder's class folder names).
        train: The (possibly capped) training pool; split by ``train_idx``/``val_idx``.
        test: The test split.
        train_idx: Sorted indices into ``train`` used for fitting.
        val_idx: Sorted indices into ``train`` held out for validation.
        mean: Per-channel mean on the [0, 1] scale the model input is normalised with: from
            the ``train_idx`` images only, or the fixed values of :attr:`normalize`.
        std: Per-channel standard deviation on the [0, 1] scale, likewise.
        ood: OOD images by set name, uint8 NHWC at :attr:`image_shape`.
        resize: How the service fits a photo to :attr:`image_shape` (and how a folder's images
            were fitted): a :data:`pipeline.images.RESIZE_POLICIES` entry.
        normalize: Where :attr:`mean` and :attr:`std` come from (``model.normalize``:
            ``dataset`` or a :data:`pipeline.preprocessing.NORMALIZATIONS` key).
    """

    dataset: str
    class_names: list[str]
    train: ImageSet
    test: ImageSet
    train_idx: np.ndarray
    val_idx: np.ndarray
    mean: list[float]
    std: list[float]
    ood: dict[str, np.ndarray]
    resize: str
    normalize: str = "dataset"

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The ID image shape ``(H, W, C)``."""
        height, width, channels = self.train.images.shape[1:]
        return int(height), int(width), int(channels)


def _check_ood_names(ood_names: Sequence[str]) -> None:
    unknown = [n for n in ood_names if n not in OOD_NAMES and not n.startswith(FOLDER_OOD_PREFIX)]
    if unknown:
        raise ValueError(
            f"unknown OOD set(s) {unknown}; expected names from {list(OOD_NAMES)} "
            f"or {FOLDER_OOD_PREFIX}<path>"
        )


def prepare_data(
    cfg: DataConfig,
    raw_dir: Path,
    *,
    max_train: int | None,
    system_dir: Path | None = None,
    checksums: Checksums | None = None,
    downloader: Downloader | None = None,
    ood_count: int | None = None,
    scratch: Path | None = None,
    normalize: str = "dataset",
) -> PreparedData:
    """Fetch or read, cap, split and describe the ``data`` section's dataset, with its OOD sets.

    A built-in dataset is fetched into ``raw_dir``; a ``folder`` dataset is read from
    ``cfg.root`` (relative paths are relative to the working directory).

    Args:
        cfg: The ``data`` section.
        raw_dir: Raw-data root of the built-in and downloadable OOD sets.
        max_train: Cap on the training pool (stratified subset), or ``None`` for all; the
            study passes its own.
        system_dir: Passed to :func:`fetch_dataset`.
        checksums: Passed to :func:`fetch_dataset`.
        downloader: Passed to :func:`fetch_dataset` and :func:`load_ood`.
        ood_count: Images per OOD set; defaults to the test-set size.
        scratch: A folder dataset's images are decoded into mapped files here instead of into
            memory (see :func:`pipeline.data.folder_split.split_folder`); they must outlive
            the returned data until :func:`save_prepared` has written it.
        normalize: ``model.normalize``: the training split's statistics (``dataset``) or the
            fixed input scaling the model's pretrained weights expect
            (:func:`pipeline.preprocessing.input_scaling`).

    Returns:
        The prepared data.
    """
    _check_ood_names(cfg.ood)
    options = FolderOptions(
        image_size=(cfg.image_size[0], cfg.image_size[1]),
        channels=cfg.channels,
        resize=cfg.resize,
        on_error=cfg.on_error,
        workers=cfg.workers,
    )
    if cfg.dataset == FOLDER:
        rule = SplitRule(cfg.test_fraction, cfg.seed, max_train, cfg.max_test)
        splits = split_folder(Path(cfg.root), options, rule, scratch)
        class_list, train, test, split = (
            splits.class_names,
            splits.pool,
            splits.test,
            splits.val_idx,
        )
    else:
        folder = fetch_dataset(
            cfg.dataset, raw_dir, system_dir=system_dir, checksums=checksums, downloader=downloader
        )
        train, test = load_id_dataset(cfg.dataset, folder)
        class_list, split = class_names(cfg.dataset, num_classes(cfg.dataset)), None
        if max_train is not None:
            train = train.subset(stratified_subset(train.labels, max_train, cfg.seed))
        if cfg.max_test is not None:
            test = test.subset(stratified_subset(test.labels, cfg.max_test, cfg.seed))
    if split is None:
        train_idx, val_idx = stratified_split(train.labels, cfg.val_fraction, cfg.seed)
    else:  # a folder's own val/ split
        val_idx = np.asarray(split, dtype=np.int64)
        train_idx = np.setdiff1d(np.arange(len(train)), val_idx).astype(np.int64)
    mean, std = input_scaling(normalize, train.images, train_idx)
    data = PreparedData(
        cfg.dataset,
        class_list,
        train,
        test,
        train_idx,
        val_idx,
        mean,
        std,
        {},
        cfg.resize,
        normalize,
    )
    count = len(test) if ood_count is None else ood_count
    for name in cfg.ood:
        if name.startswith(FOLDER_OOD_PREFIX):
            root = Path(name.removeprefix(FOLDER_OOD_PREFIX))
            images = read_image_tree(root, replace(options, image_size=data.image_shape[:2]))
            images = match_channels(images, data.image_shape[2])
            if count < len(images):
                rng = np.random.default_rng(cfg.seed)
                images = images[np.sort(rng.choice(len(images), size=count, replace=False))]
        else:
            images = load_ood(
                name,
                shape=data.image_shape,
                raw_dir=raw_dir,
                count=count,
                seed=cfg.seed,
                downloader=downloader,
            )
        data.ood[name] = images
    logger.info(
        "%s: %d train, %d val, %d test; OOD %s",
        cfg.dataset,
        len(train_idx),
        len(val_idx),
        len(test),
        {k: len(v) for k, v in data.ood.items()},
    )
    return data


def _save_npz(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    # Writing through a handle stops numpy from appending a second .npz suffix.
    with atomic_path(dest) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)


def _save_npy(dest: Path, array: np.ndarray) -> None:
    with atomic_path(dest) as tmp, tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def save_prepared(data: PreparedData, out_dir: Path) -> None:
    """Write the images as ``x_train.npy``/``x_test.npy``, then ``labels.npz``, ``split.npz``,
    ``ood.npz`` and ``meta.json`` into ``out_dir``.

    The images are plain ``.npy`` files so that :func:`load_prepared` can map them instead of
    reading them (a dataset larger than memory). ``meta.json`` is written last, so its presence
    means the other files are complete.

    Args:
        data: What to save.
        out_dir: Destination folder, created if needed.
    """
    out_dir = Path(out_dir)
    # The marker goes first and comes back last: a rewrite killed half-way leaves no meta.json,
    # never the old one beside a mix of old and new arrays.
    (out_dir / "meta.json").unlink(missing_ok=True)
    _save_npy(out_dir / "x_train.npy", data.train.images)
    _save_npy(out_dir / "x_test.npy", data.test.images)
    _save_npz(out_dir / "labels.npz", {"y_train": data.train.labels, "y_test": data.test.labels})
    _save_npz(out_dir / "split.npz", {"train_idx": data.train_idx, "val_idx": data.val_idx})
    _save_npz(out_dir / "ood.npz", data.ood)
    meta = {
        "dataset": data.dataset,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "image_shape": list(data.image_shape),
        "resize": data.resize,
        "mean": data.mean,
        "std": data.std,
        "normalize": data.normalize,
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


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def load_prepared(out_dir: Path, *, mmap: bool = False) -> PreparedData:
    """Read what :func:`save_prepared` wrote.

    Args:
        out_dir: Folder holding the prepared files.
        mmap: Map the image files read-only instead of reading them: pages are read when
            touched, so a dataset larger than memory can be trained on batch by batch.

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
        dataset, names, resize = meta["dataset"], meta["class_names"], meta["resize"]
        mean, std, ood_names = meta["mean"], meta["std"], meta["ood_names"]
    except KeyError as exc:
        raise DataError(
            f"{out_dir / 'meta.json'} lacks key {exc}; rerun the download stage"
        ) from exc
    labels = _load_npz(out_dir / "labels.npz", ("y_train", "y_test"))
    split = _load_npz(out_dir / "split.npz", ("train_idx", "val_idx"))
    ood = _load_npz(out_dir / "ood.npz", ood_names)
    return PreparedData(
        dataset=dataset,
        class_names=[str(n) for n in names],
        train=ImageSet(_load_npy(out_dir / "x_train.npy", mmap), labels["y_train"]),
        test=ImageSet(_load_npy(out_dir / "x_test.npy", mmap), labels["y_test"]),
        train_idx=split["train_idx"],
        val_idx=split["val_idx"],
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        ood=ood,
        resize=str(resize),
        # prepared before model.normalize existed: the training split's statistics
        normalize=str(meta.get("normalize", "dataset")),
    )
