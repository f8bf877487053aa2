"""A user's image folder as a dataset (pipeline/data/folder.py and prepare_data on it)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.data import DataError, folder, load_prepared, prepare_data, save_prepared
from pipeline.data.folder import FolderOptions, read_images, scan_folder
from pipeline.images import load_image
from serving.images import decode_image
from serving.predictor import Predictor
from tests.conftest import data_config
from tests.image_folder import CLASS_COLOURS, class_image, encode, make_image_folder

SIZE = (16, 16)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "photos")


def folder_config(params: dict[str, Any], root: Path, **overrides: Any) -> Any:
    values = {
        "dataset": "folder",
        "root": str(root),
        "image_size": list(SIZE),
        "channels": 3,
        "on_error": "skip",
        "workers": 1,
        "ood": ["noise"],
        "max_train": None,
        "max_test": None,
        **overrides,
    }
    return data_config(params, **values)


def test_scan_finds_classes_files_and_ignores_other_files(photos: Path) -> None:
    layout = scan_folder(photos)
    assert layout.class_names == sorted(CLASS_COLOURS) == ["cat", "dog", "fox"]
    files = layout.files["all"]
    # 8 per class, plus cat's nested, rotated and broken files; dog/notes.txt is ignored.
    assert len(files) == 3 * 8 + 3 and layout.ignored == 1
    assert (photos / "cat" / "more" / "cat_nested.png", 0) in files
    assert all(label == 2 for path, label in files if path.parent.name == "fox")


def test_unreadable_files_stop_with_their_names_by_default(
    photos: Path, params: dict[str, Any]
) -> None:
    cfg = folder_config(params, photos, on_error="error")
    with pytest.raises(DataError) as info:
        prepare_data(cfg, photos, max_train=None)
    message = str(info.value)
    assert "1 unreadable image file(s)" in message and "broken.png" in message
    assert "data.on_error: skip" in message


def test_skip_leaves_unreadable_files_out_and_logs_them(
    photos: Path, params: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        data = prepare_data(folder_config(params, photos), photos, max_train=None)
    assert "broken.png" in caplog.text
    assert data.class_names == ["cat", "dog", "fox"] and data.dataset == "folder"
    assert data.image_shape == (16, 16, 3)
    total = len(data.train) + len(data.test)
    assert total == 26  # 27 image files, one broken
    # Stratified: every class on both sides of the test split and of the validation split.
    for labels in (data.test.labels, data.train.labels[data.val_idx]):
        assert sorted(set(labels.tolist())) == [0, 1, 2]
    assert len(data.test) == 6  # round(0.2 * n) per class: 2 + 2 + 2
    assert data.ood["noise"].shape == (6, 16, 16, 3)


def test_split_is_seeded(photos: Path, params: dict[str, Any]) -> None:
    first = prepare_data(folder_config(params, photos), photos, max_train=None)
    again = prepare_data(folder_config(params, photos), photos, max_train=None)
    other = prepare_data(folder_config(params, photos, seed=1), photos, max_train=None)
    np.testing.assert_array_equal(first.test.images, again.test.images)
    assert not np.array_equal(first.test.images, other.test.images)


def test_given_splits_are_used_as_they_are(tmp_path: Path, params: dict[str, Any]) -> None:
    root = tmp_path / "split"
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        make_image_folder(root / split, per_class=count, broken=False)
    data = prepare_data(folder_config(params, root), root, max_train=None)
    per_class = {"train": 6 + 2, "val": 2, "test": 3}  # cat also has a nested and a rotated file
    assert len(data.test) == 3 * per_class["test"] + 2
    assert len(data.val_idx) == 3 * per_class["val"] + 2
    assert len(data.train_idx) == 3 * 6 + 2
    # The pool is train then val, in that order: validation indices are the tail.
    assert data.val_idx.tolist() == list(range(len(data.train_idx), len(data.train)))


def test_without_val_folder_validation_comes_from_train(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    root = tmp_path / "split"
    for split in ("train", "test"):
        make_image_folder(root / split, per_class=4, broken=False)
    data = prepare_data(folder_config(params, root), root, max_train=None)
    assert len(data.train) == 3 * 4 + 2 and len(data.test) == 3 * 4 + 2
    assert len(data.val_idx) == 3  # round(0.1 * n) clamped to at least one per class


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "at least two; found none"),
        (lambda root: (root / "only").mkdir(parents=True), "found only ['only']"),
    ],
)
def test_bad_roots_give_one_clear_message(
    tmp_path: Path, params: dict[str, Any], make: Any, message: str
) -> None:
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(DataError, match=str(root)) as info:
        prepare_data(folder_config(params, root), root, max_train=None)
    assert message in str(info.value)


def test_a_class_with_one_image_is_named(tmp_path: Path, params: dict[str, Any]) -> None:
    root = make_image_folder(tmp_path / "photos", per_class=3, broken=False)
    for extra in sorted((root / "fox").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(DataError, match=r"fewer than 2 readable images .*'fox': 1"):
        prepare_data(folder_config(params, root), root, max_train=None)


def test_test_split_naming_an_unknown_class_is_refused(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    root = tmp_path / "split"
    make_image_folder(root / "train", per_class=2, broken=False)
    make_image_folder(root / "test", per_class=2, broken=False)
    shutil.copytree(root / "test" / "fox", root / "test" / "wolf")
    with pytest.raises(DataError, match=r"\['wolf'\] are in .* but not in .*train"):
        prepare_data(folder_config(params, root), root, max_train=None)


def test_folder_params_are_validated(params: dict[str, Any], photos: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.channels"):
        folder_config(params, photos, channels=2)
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        folder_config(params, photos, image_size=[64])
    with pytest.raises(ConfigError, match=r"data\.resize"):
        folder_config(params, photos, resize="squash")
    with pytest.raises(ConfigError, match=r"data\.on_error"):
        folder_config(params, photos, on_error="ignore")
    with pytest.raises(ConfigError, match=r"data\.test_fraction"):
        folder_config(params, photos, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match=r"folder:<path>"):
        folder_config(params, photos, ood=["folder:"])


def test_parallel_decoding_equals_serial(photos: Path) -> None:
    paths = [path for path, _ in scan_folder(photos).files["all"]]
    options = FolderOptions(SIZE, 3, "resize_shorter_then_center_crop", "skip", workers=1)
    serial, failed = read_images(paths, options)
    parallel, failed_too = read_images(paths, FolderOptions(SIZE, 3, options.resize, "skip", 2))
    np.testing.assert_array_equal(serial, parallel)
    assert [p for p, _ in failed] == [p for p, _ in failed_too] == [photos / "cat" / "broken.png"]


@pytest.mark.parametrize("size", [(600, 800), (20, 20)])
def test_the_service_fits_a_photo_as_the_data_stage_did(
    params: dict[str, Any], tmp_path: Path, size: tuple[int, int]
) -> None:
    # The data stage's pixels of a file equal the service's for the same bytes: decode_image
    # (drafting a JPEG for the model's size) in the request, fit_image under the card's policy
    # in Predictor.conform. The large photo is decoded at 1/8 scale by both.
    data = encode(class_image(CLASS_COLOURS["dog"], size, 3), "JPEG", quality=90)
    policy = params["data"]["resize"]
    stage = load_image(data, size=(12, 20), channels=1, policy=policy, max_pixels=1 << 24)
    predictor = Predictor.__new__(Predictor)  # only conform(), which needs the card's fields
    predictor.card = type("Card", (), {"image_shape": [12, 20, 1], "resize": policy})()
    decoded = decode_image(data, max_pixels=1 << 24, draft_for=(12, 20))
    served = predictor.conform([decoded])
    np.testing.assert_array_equal(served[0], stage)


def test_folder_ood_set_is_read_at_the_id_shape(
    photos: Path, params: dict[str, Any], tmp_path: Path
) -> None:
    ood = tmp_path / "elsewhere" / "deep"
    ood.mkdir(parents=True)
    for i in range(3):
        (ood / f"{i}.png").write_bytes(encode(class_image((128, 128, 128), (40, 25), i), "PNG"))
    name = f"folder:{ood.parent}"
    data = prepare_data(folder_config(params, photos, ood=[name]), photos, max_train=None)
    assert data.ood[name].shape == (3, 16, 16, 3)


def test_prepared_folder_round_trips_with_class_names(
    photos: Path, params: dict[str, Any], tmp_path: Path
) -> None:
    data = prepare_data(folder_config(params, photos), photos, max_train=None)
    save_prepared(data, tmp_path / "prepared")
    loaded = load_prepared(tmp_path / "prepared")
    assert loaded.class_names == ["cat", "dog", "fox"] and loaded.resize == data.resize
    np.testing.assert_array_equal(loaded.train.images, data.train.images)


def test_decoding_into_mapped_files_equals_decoding_into_memory(
    photos: Path, params: dict[str, Any], tmp_path: Path
) -> None:
    cfg = folder_config(params, photos)
    in_memory = prepare_data(cfg, photos, max_train=None)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mapped = prepare_data(cfg, photos, max_train=None, scratch=scratch)
    assert isinstance(mapped.train.images.base, np.memmap)  # a view of the mapped file
    assert sorted(p.name for p in scratch.iterdir()) == ["test.npy", "train.npy"]
    for got, want in [
        (mapped.train.images, in_memory.train.images),
        (mapped.test.images, in_memory.test.images),
        (mapped.train.labels, in_memory.train.labels),
        (mapped.val_idx, in_memory.val_idx),
    ]:
        np.testing.assert_array_equal(got, want)
    assert (mapped.mean, mapped.std) == (in_memory.mean, in_memory.std)


def test_caps_apply_before_decoding_and_keep_the_val_folder(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "split"
    for split, count in (("train", 8), ("val", 4), ("test", 4)):
        make_image_folder(root / split, per_class=count, broken=False)
    decoded: list[Path] = []
    real = folder._decode
    monkeypatch.setattr(
        folder, "_decode", lambda path, options: decoded.append(path) or real(path, options)
    )
    data = prepare_data(folder_config(params, root, max_test=10), root, max_train=20)
    assert len(data.train) == 20 and len(data.test) == 10
    assert len(decoded) == 30  # capped images are never decoded
    val_paths = {p for p in decoded if "val" in p.parts}
    assert len(data.val_idx) == len(val_paths) > 0  # the val/ images that survived the cap
