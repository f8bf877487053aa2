"""Serving fixtures: a real exported ONNX model, real image files, a real ``bentoml serve``."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import read_params
from pipeline.input_stats import EDGES as INPUT_EDGES
from pipeline.input_stats import reference_histograms
from pipeline.model_card import FeatureReference, InputReference, ModelCard, ReferenceConfidence

ROOT = Path(__file__).parents[2]
CLASS_NAMES = ["top_left", "top_right", "bottom_left", "bottom_right"]
SIZE = 12  # model input is SIZE x SIZE x 1
READY_TIMEOUT_S = 90.0
SERVICE = "serving.service:ImageClassifier"


def serve_argv() -> list[str]:
    """``bentoml serve`` of the service, from this venv."""
    return [str(Path(sys.executable).parent / "bentoml"), "serve", SERVICE]


def quadrant_images(n: int, seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST-like toy images, uint8 (n, size, size, 1): class k lights quadrant k."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASS_NAMES)
    images = rng.integers(0, 60, size=(n, size, size, 1), dtype=np.uint8)
    half = size // 2
    for k in range(len(CLASS_NAMES)):
        r, c = divmod(k, 2)
        images[labels == k, r * half : (r + 1) * half, c * half : (c + 1) * half] += 150
    return images, labels


def png_bytes(image: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    """Encode a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as an image file."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(image, mode).save(buffer, fmt)
    return buffer.getvalue()


def train_toy_model(
    images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> Any:
    """small_cnn after two epochs of SGD (batch 32, seed 0) on uint8 ``images``; eval mode."""
    import torch

    from pipeline.models import build_model
    from pipeline.preprocessing import to_model_input

    torch.manual_seed(0)
    x = torch.from_numpy(to_model_input(images, mean, std))
    y = torch.from_numpy(labels)
    model = build_model("small_cnn", num_classes=len(CLASS_NAMES), in_channels=1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(2):
        for start in range(0, len(x), 32):
            loss = torch.nn.functional.cross_entropy(
                model(x[start : start + 32]), y[start : start + 32]
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@dataclass(frozen=True)
class ExportedModel:
    """An exported model file and the card inside it."""

    path: Path
    card: ModelCard


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """small_cnn trained for a few steps on quadrant images, exported with pipeline.export, with
    the input and feature-norm references of 2,000 more quadrant images."""
    import torch

    from pipeline.export import export_onnx
    from pipeline.feature_norm import reference as feature_reference
    from pipeline.inference import final_linear, predict_outputs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few tiny steps: more threads only contend on a busy machine
    images, labels = quadrant_images(256)
    model = train_toy_model(images, labels, [0.3], [0.3])
    reference_images = quadrant_images(2000, seed=99)[0]
    layer = final_linear(model, torch.zeros(2, 1, SIZE, SIZE))
    norms = predict_outputs(model, reference_images, [0.3], [0.3], 500, layer)[1]
    edges = read_params(ROOT / "params.yaml")["evaluate"]["reference_edges"]
    card = ModelCard(
        dataset="quadrants",
        class_names=CLASS_NAMES,
        image_shape=[SIZE, SIZE, 1],
        resize="resize_shorter_then_center_crop",
        mean=[0.3],
        std=[0.3],
        temperature=1.5,
        ood_threshold=0.6,
        ood_tpr=0.95,
        reference_confidence=ReferenceConfidence(
            bin_edges=edges, counts=[1] * (len(edges) - 1), mean=0.8
        ),
        test_accuracy=95.0,
        test_ece=2.0,
        model_version="test-0001",
        input_reference=InputReference(
            edges=list(INPUT_EDGES), **reference_histograms(reference_images)
        ),
        feature_reference=FeatureReference(**feature_reference(norms, INPUT_EDGES)),
    )
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    try:
        export_onnx(model.eval(), card, path)
    finally:
        torch.set_num_threads(threads)
    return ExportedModel(path, card)


@pytest.fixture(scope="session")
def calibrated_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """small_cnn on faint quadrants, exported with a card measured as the evaluate stage does
    (tests/serving/drift_model.py)."""
    from tests.serving.drift_model import build_calibrated_model

    return build_calibrated_model(tmp_path_factory.mktemp("calibrated_model"))


def write_params(path: Path, **serve: Any) -> Path:
    """A copy of the shipped params.yaml with ``serve`` keys overridden."""
    params = copy.deepcopy(read_params(ROOT / "params.yaml"))
    params["serve"].update(serve)
    path.write_text(yaml.safe_dump(params))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Put on PYTHONPATH, this makes `import torch` fail in every process of the service (workers
# included), as in the serve image, which has no torch.
NO_TORCH_SITECUSTOMIZE = """\
import sys
for name in ("torch", "torchvision", "onnx", "onnxscript", "scipy", "sklearn", "matplotlib"):
    sys.modules[name] = None
"""


def no_torch_dir(tmp: Path) -> Path:
    folder = tmp / "no_torch"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(NO_TORCH_SITECUSTOMIZE)
    return folder


@dataclass
class RunningService:
    """A service subprocess: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def run_service(
    argv: Sequence[str], env: dict[str, str], port: int, log: Path, cwd: Path = ROOT
) -> Iterator[RunningService]:
    """Start ``argv`` in its own process group, wait for /readyz 200, always kill the group."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = RunningService(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(service)
        yield service
    finally:
        stop_process_group(process, timeout=20)


@contextlib.contextmanager
def serving(
    model: Path,
    folder: Path,
    *,
    extra_path: Sequence[Path] = (),
    environment: dict[str, str] | None = None,
    **serve: Any,
) -> Iterator[RunningService]:
    """``bentoml serve`` of ``model`` on a free port, with the shipped params.yaml's ``serve``
    keys overridden by ``serve`` and ``environment`` added to the environment; params and log
    in ``folder``."""
    port = free_port()
    params = write_params(folder / "params.yaml", port=port, **serve)
    env = {**service_env(model, params, extra_path), **(environment or {})}
    with run_service(serve_argv(), env, port, folder / "service.log") as running:
        yield running


def stop_process_group(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM the process's group, then SIGKILL it if it has not exited within ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_ready(service: RunningService) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"service exited with {service.process.returncode}:\n{service.log_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    pytest.fail(f"service not ready after {READY_TIMEOUT_S} s:\n{service.log_text()}")


def service_env(model: Path, params: Path, extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """The environment of a service subprocess: this venv first on PATH, the given model/params."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "PROMETHEUS_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join([*map(str, extra_path), str(ROOT)]),
        RANKCAL_MODEL=str(model),
        RANKCAL_PARAMS=str(params),
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_HOME=str(params.parent / "bentoml_home"),
    )
    return env


@dataclass
class Metrics:
    """One /metrics scrape: samples by name, summed over matching labels."""

    samples: list[Any]

    @classmethod
    def scrape(cls, url: str) -> Metrics:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return cls([s for family in text_string_to_metric_families(text) for s in family.samples])

    def get(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]
