"""Atomic writes: a failed writer leaves nothing that looks complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.io import atomic_path, write_json


def test_file_appears_only_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "model.pt"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temporary file is cleaned up too


def test_existing_file_is_kept_until_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "metrics.json"
    write_json(dest, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("{")
        raise RuntimeError("killed")
    assert json.loads(dest.read_text()) == {"a": 1}
    old = os.umask(0o022)
    try:
        write_json(dest, {"a": 2})
    finally:
        os.umask(old)
    assert json.loads(dest.read_text()) == {"a": 2}
    assert dest.stat().st_mode & 0o777 == 0o644  # as a plain open() makes it, not mkstemp's 0600
