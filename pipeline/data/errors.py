"""Exceptions raised while fetching, reading and preparing datasets."""

from __future__ import annotations


class DataError(RuntimeError):
    """Base class for data problems the user can fix (missing, corrupt or malformed files)."""


class ChecksumError(DataError):
    """A file's SHA-256 does not match the recorded value."""


class DataUnavailableError(DataError):
    """The raw files are absent locally and could not be downloaded."""
