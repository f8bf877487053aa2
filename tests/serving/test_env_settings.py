"""The service's settings from environment variables (RANKCAL_SERVE_<KEY>), as a container or a
Kubernetes pod would set them over the params file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.serving.conftest import (
    ROOT,
    ExportedModel,
    free_port,
    png_bytes,
    quadrant_images,
    run_service,
    serve_argv,
    service_env,
    write_params,
)


def test_environment_overrides_the_params_file(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    params = write_params(tmp_path / "params.yaml", port=free_port(), top_k=3, workers=1)
    port = free_port()  # only the environment names this one
    env = service_env(exported_model.path, params) | {
        "RANKCAL_SERVE_PORT": str(port),
        "RANKCAL_SERVE_TOP_K": "1",
    }
    with run_service(serve_argv(), env, port, tmp_path / "service.log") as service:
        answer = httpx.post(
            f"{service.url}/classify",
            content=png_bytes(quadrant_images(1, seed=3)[0][0]),
            headers={"Content-Type": "image/png"},
        )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["top_k"]) == 1  # the file said 3


def test_a_bad_variable_stops_the_server_with_one_line(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    params = write_params(tmp_path / "params.yaml", port=free_port())
    env = service_env(exported_model.path, params) | {"RANKCAL_SERVE_WORKERS": "two"}
    done = subprocess.run(
        serve_argv(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "rankcal: cannot serve: serve.workers must be of type int, got 'two'" in done.stderr
    assert "Traceback" not in done.stderr
