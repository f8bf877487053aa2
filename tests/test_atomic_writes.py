"""Artifacts are written atomically: a writer killed at any moment leaves the old file or the new
one at the destination, never a torn one (pipeline.io.atomic_path under every writer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.checkpoint import load_checkpoint
from pipeline.data import load_prepared
from tests.conftest import ROOT

# Each writer rewrites its artifact forever, alternating between two versions (0 and 1) large
# enough that a write takes a while; a version is recognisable in the file it leaves.
WRITERS = {
    "json": """
from pipeline.io import write_json
for i in range(10**9):
    write_json(DEST, {"version": i % 2, "payload": [i % 2] * 400_000})
""",
    "checkpoint": """
import torch
from pipeline.checkpoint import save_checkpoint
from pipeline.models import build_model
model = build_model("resnet18", num_classes=10, in_channels=3)
for i in range(10**9):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(i % 2)
    save_checkpoint(DEST, model, meta={"version": i % 2}, epoch=i % 2)
""",
    "prepared": """
from tests.conftest import synthetic_prepared
from pipeline.data import save_prepared
data = [synthetic_prepared(n=n, size=28, seed=0) for n in (4000, 3000)]
import time
for i in range(10**9):
    save_prepared(data[i % 2], DEST)
    time.sleep(0.1)  # a whole directory can be seen between two rewrites
""",
}


def check_whole(kind: str, dest: Path) -> int | None:
    """The version the artifact at ``dest`` holds, after checking it is whole; None if absent."""
    if kind == "json":
        if not dest.exists():
            return None
        payload = json.loads(dest.read_text())
        assert set(payload["payload"]) == {payload["version"]}
        return int(payload["version"])
    if kind == "checkpoint":
        if not dest.exists():
            return None
        ckpt = load_checkpoint(dest)
        values = {float(t.float().mean()) for k, t in ckpt["model"].items() if "conv" in k}
        assert values == {float(ckpt["meta"]["version"])}
        return int(ckpt["meta"]["version"])
    if not (dest / "meta.json").exists():
        return None
    # meta.json is removed first and written last: when it is there, every file is the version
    # it describes (the two versions differ in size).
    meta = json.loads((dest / "meta.json").read_text())
    data = load_prepared(dest)
    assert len(data.train) == len(data.train.images) == meta["sizes"]["train_pool"]
    assert len(data.train_idx) + len(data.val_idx) == len(data.train)
    return len(data.train)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_writer_killed_at_random_moments_never_leaves_a_torn_file(
    kind: str, tmp_path: Path
) -> None:
    dest = tmp_path / ("artifact" if kind == "prepared" else f"artifact.{kind}")
    code = f"DEST = {str(dest)!r}\n" + WRITERS[kind]
    rng = np.random.default_rng(7)
    seen: set[int | None] = set()
    for _ in range(5):
        writer = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=subprocess.PIPE,
        )
        # The first writer runs until it has written once (on a loaded machine importing torch
        # and writing a checkpoint takes longer than any fixed delay), so a version is always
        # there to be torn; every kill then falls at a random moment of a later write.
        written = dest / "meta.json" if kind == "prepared" else dest
        deadline = time.monotonic() + 300
        while not written.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5 + float(rng.uniform(0, 1.0)))  # past start-up, then a random moment
        assert writer.poll() is None, writer.stderr.read().decode() if writer.stderr else ""
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
        seen.add(check_whole(kind, dest))
    assert seen - {None}, "the writer never finished a write: make the test's delays longer"
