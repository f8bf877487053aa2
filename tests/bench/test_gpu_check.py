"""bench/gpu_check.py as its CPU dry run: every step passes, the report holds sane numbers, and
nothing on its import chain needs what the GPU machine lacks (dvclive, BentoML, pydantic, DVC).

The CUDA-only parts (bf16 inference, the CUDA provider, NCCL) are skipped by the script itself
under ``--device cpu``; nothing here is skipped for want of a GPU.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SYSTEM_FASHION_MNIST, needs_fashion_mnist

SCRIPT = ROOT / "bench" / "gpu_check.py"
FORBIDDEN = ("dvc", "dvclive", "bentoml")
TINY = ["--device", "cpu", "--epochs", "1", "--max-train", "100", "--max-test", "100"]


def run_check(out: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the script in a fresh interpreter and read back its JSON report."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--bench-seconds", "0.05", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = out / "gpu_check.json"
    assert report.is_file(), f"no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done, json.loads(report.read_text())


@pytest.mark.slow
@needs_fashion_mnist
def test_cpu_dry_run_passes_and_reports_positive_figures(tmp_path: Path) -> None:
    flags = [*TINY, "--fashion-mnist", str(SYSTEM_FASHION_MNIST)]
    done, report = run_check(tmp_path, *flags)
    assert done.returncode == 0, done.stdout[-5000:]
    failed = {name: step["error"] for name, step in report["steps"].items() if not step["ok"]}
    assert report["ok"] and not failed, failed
    assert report["environment"]["forbidden_modules_imported"] == []
    figures = report["figures"]

    assert figures["data"]["train_images"] + figures["data"]["val_images"] == 100
    for run in ("small_cnn/ce", "small_cnn/mndcg", "resnet18/ce", "resnet18/mndcg"):
        train = figures[f"train {run}"]
        for key in ("seconds", "images_per_s", "images_per_s_overall"):
            assert train[key] > 0, (run, key)
        # 10 validation images after one epoch: any accuracy is possible, only its range is not.
        assert 0 <= train["best_val_accuracy_pct"] <= 100
        assert 0 <= train["last_val_ece_pct"] <= 100
        assert "peak_cuda_memory_mib" not in train  # a CUDA-only figure
    export = figures["export"]
    assert export["onnx_bytes"] > 0 and export["temperature"] > 0
    assert export["ece_abs_diff"] <= 1e-4  # verify_export's own limit, in points
    cpu = figures["onnxruntime CPUExecutionProvider"]
    assert {k: v > 0 for k, v in cpu.items()} == {
        f"batch_{b}_images_per_s": True for b in (1, 64, 1024)
    }
    assert "onnxruntime CUDAExecutionProvider" not in figures
    assert figures["pytorch cpu"]["fp32_batch_1024_images_per_s"] > 0
    ddp = figures["ddp"]  # the CPU dry run trains the library as 2 gloo DDP processes
    assert (ddp["backend"], ddp["processes"]) == ("gloo", 2)
    assert ddp["images_per_s_overall"] > 0 and 0 <= ddp["val_accuracy_pct"] <= 100

    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("| section | figure | value |")
    assert "| train resnet18/mndcg | images_per_s |" in summary
    assert "## GPU check summary (PASSED" in done.stdout


def test_missing_data_fails_every_dependent_step_but_runs_them_all(tmp_path: Path) -> None:
    flags = [*TINY, "--fashion-mnist", str(tmp_path / "absent"), "--archs", "small_cnn"]
    done, report = run_check(tmp_path / "out", *flags)
    assert done.returncode == 1
    steps = report["steps"]
    assert "lacks" in steps["data"]["error"]
    dependent = ("train small_cnn/ce", "onnx export", "onnxruntime", "pytorch inference", "ddp")
    for name in dependent:
        assert not steps[name]["ok"], name
    # Steps that need no data still ran and passed.
    assert steps["environment"]["ok"] and steps["import chain"]["ok"]
    assert not report["ok"]


def pipeline_imports() -> list[str]:
    """Every ``pipeline`` module the script imports, at the top or inside a step."""
    names = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("pipeline"))
    return sorted(names)


def test_import_chain_pulls_in_no_training_logger_or_service() -> None:
    modules = pipeline_imports()
    assert {"pipeline.training", "pipeline.export", "pipeline.data"} <= set(modules)
    code = (
        "import importlib, runpy, sys\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='gpu_check')\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print('FORBIDDEN', bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FORBIDDEN []" in done.stdout, done.stdout


def test_without_pydantic_or_its_wheels_the_script_says_how_to_fetch_them(tmp_path: Path) -> None:
    """A bare CUDA image lacks pydantic (the params parser): the script installs the carried
    wheels, and without them stops with one line naming the command that fetches them."""
    blocker = tmp_path / "no_pydantic"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['pydantic'] = None\n")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(blocker),
        "GPU_WHEELS": str(tmp_path / "no_wheels"),
        "OUT": str(tmp_path / "out"),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), *TINY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "run bench/gpu_check.sh --fetch-wheels" in done.stderr
