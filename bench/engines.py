"""ONNX Runtime against PyTorch eager: the same model, the same inputs, timed in alternation.

The exported model runs in ONNX Runtime, the checkpoint it came from in PyTorch eager, wrapped
with the card's temperature so both compute the same probabilities; the two are timed in
alternating rounds (ABBA...) so slow drift of the machine hits them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from bench.loadgen import log
from pipeline.checkpoint import load_model
from pipeline.export import CalibratedNet
from pipeline.model_card import INPUT_NAME, METADATA_KEY, ModelCard

ENGINE_BATCHES = (1, 64)
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@dataclass(frozen=True)
class EngineRate:
    """Images per second of both engines at one batch size, and how far their outputs differ."""

    batch: int
    ort_ips: float
    torch_ips: float
    max_abs_diff: float  # largest |p_ort - p_torch| of the batch's probabilities

    @property
    def ratio(self) -> float:
        """ONNX Runtime's rate over PyTorch's."""
        return self.ort_ips / self.torch_ips


def load_engines(
    model: Path, checkpoint: Path, device: str, threads: int | None = None
) -> tuple[ort.InferenceSession, nn.Module, ModelCard]:
    """The ONNX session, and the checkpoint wrapped with the card's temperature, on ``device``.

    Args:
        model: The exported ``.onnx`` file (card in its metadata).
        checkpoint: The checkpoint it was exported from.
        device: ``cpu`` or ``cuda``.
        threads: CPU threads of both engines (torch's and ONNX Runtime's intra-op pool); None
            leaves each library's default.

    Raises:
        RuntimeError: If ``device`` is cuda and ONNX Runtime or PyTorch cannot use it.
    """
    providers = [CUDA, CPU] if device == "cuda" else [CPU]
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        torch.set_num_threads(threads)
    session = ort.InferenceSession(str(model), options, providers=providers)
    if session.get_providers()[0] != providers[0]:
        raise RuntimeError(
            f"asked for {providers[0]}, ONNX Runtime runs on {session.get_providers()}"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("asked for cuda, but PyTorch sees no CUDA device")
    card = ModelCard.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    net, _ = load_model(checkpoint)
    calibrated = CalibratedNet(net, card.temperature).eval()
    # As pipeline/training.py and pipeline/inference.py do: channels-last weights and inputs.
    return session, calibrated.to(device, memory_format=torch.channels_last), card


def timed_calls(fn: Callable[[], Any], seconds: float) -> tuple[int, float]:
    """Call ``fn`` back to back for ``seconds`` (at least once): calls made, seconds taken."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls, elapsed


def alternate(fns: dict[str, Callable[[], Any]], seconds: float, rounds: int) -> dict[str, float]:
    """Calls per second of each function, timed in ``rounds`` alternating turns (ABBA...).

    Each function gets ``seconds`` in all, after one untimed warm-up turn of a quarter of that
    (at most 1 s); the order flips each round so slow drift of the machine hits all alike.
    """
    for fn in fns.values():
        timed_calls(fn, min(1.0, seconds / 4))
    totals = {name: [0, 0.0] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            calls, elapsed = timed_calls(fns[name], seconds / rounds)
            totals[name][0] += calls
            totals[name][1] += elapsed
    return {name: calls / elapsed for name, (calls, elapsed) in totals.items()}


def compare_engines(
    session: ort.InferenceSession,
    net: nn.Module,
    inputs: np.ndarray,
    *,
    seconds: float,
    rounds: int,
    batch_sizes: Sequence[int] = ENGINE_BATCHES,
) -> list[EngineRate]:
    """Images/s of ONNX Runtime and PyTorch eager on the same inputs, numpy in, numpy out.

    Args:
        session: ONNX Runtime session of the exported model (output ``probabilities``).
        net: The model in PyTorch returning ``(logits, probabilities)``, eval mode, on its device.
        inputs: Preprocessed float32 ``(N, C, H, W)``, N at least the largest batch size.
        seconds: Timed seconds per engine and batch size.
        rounds: Alternations of the two engines per batch size.
        batch_sizes: Batch sizes to time.
    """
    device = next(net.parameters()).device
    rates = []
    with torch.inference_mode():
        for batch in batch_sizes:
            x = np.ascontiguousarray(inputs[:batch])

            def run_ort(x: np.ndarray = x) -> np.ndarray:
                return session.run(["probabilities"], {INPUT_NAME: x})[0]

            def run_torch(x: np.ndarray = x) -> np.ndarray:
                t = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
                return net(t)[1].float().cpu().numpy()

            diff = float(np.max(np.abs(run_ort() - run_torch())))
            calls = alternate({"ort": run_ort, "torch": run_torch}, seconds, rounds)
            rate = EngineRate(batch, batch * calls["ort"], batch * calls["torch"], diff)
            log(f"batch {batch}: ORT {rate.ort_ips:.0f} img/s, torch {rate.torch_ips:.0f} img/s")
            rates.append(rate)
    return rates
