"""`bentoml build` of bentofile.yaml: the Bento holds the service, the model and torch-free pinned
dependencies, and serves on its own (no checkout on the path, no torch importable)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.serving.conftest import (
    ROOT,
    ExportedModel,
    free_port,
    no_torch_dir,
    png_bytes,
    quadrant_images,
    run_service,
    write_params,
)

BENTOML = str(Path(sys.executable).parent / "bentoml")


def pins(path: Path) -> dict[str, str]:
    """``name: version`` of a requirements file's ``name==version`` lines."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    pairs = [ln.split("==") for ln in lines if ln and not ln.startswith("#")]
    assert all(len(p) == 2 for p in pairs), "every requirement must be pinned with =="
    return {name.lower().replace("_", "-"): version for name, version in pairs}


def test_serving_requirements_are_the_locks_versions_without_torch() -> None:
    serving = pins(ROOT / "serving" / "requirements.txt")
    lock = pins(ROOT / "requirements.lock")
    assert {"bentoml", "onnxruntime-gpu", "pillow", "numpy", "prometheus-client"} <= set(serving)
    assert {"pyyaml", "uvloop", "httptools"} <= set(serving)
    assert not {"torch", "torchvision", "dvc", "scipy", "timm"} & set(serving)
    assert {name: lock.get(name) for name in serving} == serving


@pytest.fixture(scope="module")
def bento(exported_model: ExportedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build context like the checkout after `make repro` (the toy model as models/model.onnx,
    a params.yaml on a free port), built with `bentoml build`; the Bento's directory."""
    ctx = tmp_path_factory.mktemp("ctx")
    for name in ("serving", "pipeline"):
        shutil.copytree(ROOT / name, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "bentofile.yaml", ctx)
    (ctx / "models").mkdir()
    shutil.copy(exported_model.path, ctx / "models" / "model.onnx")
    write_params(ctx / "params.yaml", port=free_port(), workers=1)
    home = tmp_path_factory.mktemp("bentoml_home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("RANKCAL_MODEL", None)
    env.pop("RANKCAL_PARAMS", None)
    done = subprocess.run(
        [BENTOML, "build", "--output", "tag"],
        cwd=ctx,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = [p for p in (home / "bentos" / "rankcal").iterdir() if p.is_dir()]
    return path


def test_bento_holds_the_service_the_model_and_no_training_code(
    bento: Path, exported_model: ExportedModel
) -> None:
    src = bento / "src"
    assert (src / "serving" / "service.py").is_file()
    assert (src / "models" / "model.onnx").read_bytes() == exported_model.path.read_bytes()
    assert (src / "params.yaml").is_file()
    modules = {p.name for p in (src / "pipeline").glob("*.py")}
    assert {"model_card.py", "preprocessing.py", "feature_norm.py", "input_stats.py"} <= modules
    assert not {"training.py", "evaluation.py", "export.py", "inference.py"} & modules
    assert not (src / "pipeline" / "models").exists() and not (src / "stages").exists()
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["name"] == "rankcal" and info["labels"] == {"project": "rankcal"}
    assert {r["route"] for r in info["schema"]["routes"]} >= {"/classify", "/classify_batch"}
    requirements = pins(bento / "env" / "python" / "requirements.txt")
    assert requirements == pins(ROOT / "serving" / "requirements.txt")


def test_the_bento_serves_without_the_checkout_or_torch(bento: Path, tmp_path: Path) -> None:
    """`bentoml serve rankcal:<version>` from the Bento store, from an empty directory, with
    only a no-torch hook on PYTHONPATH: it answers with the model inside the Bento."""
    port = yaml.safe_load((bento / "src" / "params.yaml").read_text())["serve"]["port"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "RANKCAL_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(no_torch_dir(tmp_path)),
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_HOME=str(bento.parents[2]),  # the store the Bento was built into
    )
    argv = [BENTOML, "serve", f"rankcal:{bento.name}"]
    with run_service(argv, env, port, tmp_path / "bento.log", cwd=tmp_path) as service:
        image = quadrant_images(1, seed=2)[0][0]
        answer = httpx.post(
            f"{service.url}/classify",
            content=png_bytes(image),
            headers={"Content-Type": "image/png"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["class_name"] == "top_left"
