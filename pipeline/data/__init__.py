"""Dataset fetching, reading, splitting and the prepared-data product of the download stage."""

from __future__ import annotations

from pipeline.data.download import (
    Downloader,
    dataset_dir,
    fetch_dataset,
    load_checksums,
    sha256_file,
    torchvision_downloader,
    verify_file,
)
from pipeline.data.errors import ChecksumError, DataError, DataUnavailableError
from pipeline.data.ood import OOD_NAMES, load_ood
from pipeline.data.prepared import PreparedData, load_prepared, prepare_data, save_prepared
from pipeline.data.readers import ID_DATASETS, ImageSet, load_id_dataset, num_classes, read_idx
from pipeline.data.split import stratified_split, stratified_subset

__all__ = [
    "ID_DATASETS",
    "OOD_NAMES",
    "ChecksumError",
    "DataError",
    "DataUnavailableError",
    "Downloader",
    "ImageSet",
    "PreparedData",
    "dataset_dir",
    "fetch_dataset",
    "load_checksums",
    "load_id_dataset",
    "load_ood",
    "load_prepared",
    "num_classes",
    "prepare_data",
    "read_idx",
    "save_prepared",
    "sha256_file",
    "stratified_split",
    "stratified_subset",
    "torchvision_downloader",
    "verify_file",
]
