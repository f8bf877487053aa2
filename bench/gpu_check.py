"""One-shot GPU check: train, export, serve-path throughput and NCCL on a borrowed CUDA machine.

Runs the library in ``pipeline/`` directly (never the ``stages/`` entry points, which import
dvclive) through the steps a GPU changes: the environment; the project's Fashion-MNIST
preparation; training of ``small_cnn`` and ``resnet18`` with ``ce`` and ``mndcg`` on CUDA with
bf16 autocast; the ONNX export of the ``small_cnn``/``mndcg`` model with its temperature, checked
by :func:`pipeline.export.verify_export`; ONNX Runtime and PyTorch inference images/s; a
1-process NCCL group. Every step runs inside its own ``try``, so one failure does not hide the
others; the exit code is 1 when a required step failed. The figures end in one markdown table,
written with a JSON of every number into ``--out``.

``--device cpu`` with small caps is a dry run of the same code on a CPU-only machine: the
CUDA-only assertions are skipped (and say so), NCCL is replaced by 2 gloo processes.

Usage on the device (about 3 minutes on an H200): bench/gpu_check.sh [--epochs 3]

Usage as a CPU dry run (under a minute on 2 cores)::

    python bench/gpu_check.py --device cpu --epochs 1 --max-train 500 --max-test 300
        --bench-seconds 0.5 --fashion-mnist /usr/share/datasets/fashion-mnist --out /tmp/gc
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from pipeline.data import PreparedData
    from pipeline.model_card import ModelCard

ROOT = Path(__file__).resolve().parents[1]
# On the device the project is a plain copy, not an installed package: make ``pipeline``
# importable however the script is started (bench/gpu_check.sh also sets PYTHONPATH).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARCHS = ("small_cnn", "resnet18")
LOSSES = ("ce", "mndcg")
EXPORT_RUN = "small_cnn/mndcg"  # the default pipeline's model: the one serving would load
INFERENCE_BATCHES = (1, 64, 1024)
TORCH_BATCH = 1024
# The stages' tooling and the service's framework: the GPU machine has none of them, so the
# library path this check takes (training, evaluation, export) must never import them.
# (pydantic, which parses params, travels as wheels: bench/gpu_check.sh --fetch-wheels.)
FORBIDDEN_MODULES = ("dvc", "dvclive", "bentoml")
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass
class StepResult:
    """Outcome of one step: whether it passed, how long it took, and why it failed."""

    required: bool
    ok: bool = False
    seconds: float = 0.0
    error: str | None = None
    traceback: str | None = None


@dataclass
class Check:
    """What the steps share: parsed arguments, results so far, and intermediate products."""

    args: argparse.Namespace
    work: Path
    params: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, StepResult] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data: PreparedData | None = None
    checkpoints: dict[str, Path] = field(default_factory=dict)
    onnx_path: Path | None = None
    card: ModelCard | None = None

    @property
    def cuda(self) -> bool:
        """Whether this run is the real GPU check (CUDA assertions on)."""
        return self.args.device == "cuda"

    def figure(self, section: str, name: str, value: Any) -> None:
        """Record one figure for the JSON and the summary table."""
        self.figures.setdefault(section, {})[name] = value

    def note(self, text: str) -> None:
        """Print a remark now and keep it for the summary."""
        say(text)
        self.notes.append(text)

    def run(self, name: str, fn: Callable[[Check], None], *, required: bool = True) -> None:
        """Run step ``name``; record its time, and its failure with the traceback."""
        say(f"\n=== {name} ===")
        result = StepResult(required=required)
        started = time.perf_counter()
        try:
            fn(self)
            result.ok = True
        except Exception as err:  # a failed step must not stop the others
            result.error = f"{type(err).__name__}: {err}"
            result.traceback = traceback.format_exc()
            say(result.traceback.rstrip())
        result.seconds = time.perf_counter() - started
        self.steps[name] = result
        status = "ok" if result.ok else f"FAILED ({result.error})"
        say(f"--- {name}: {status} in {result.seconds:.1f} s")


def say(text: str) -> None:
    """Print and flush at once: the output is tee'd and read while the check runs."""
    print(text, flush=True)


def section(params: dict[str, Any], name: str, /, **overrides: Any) -> Any:
    """The typed params section ``name`` with ``overrides``, validated as the stages do."""
    from pipeline.config import load_section

    return load_section({name: {**params[name], **overrides}}, name)


def throughput(call: Callable[[], object], batch: int, budget_s: float) -> float:
    """Images/s of ``call`` (one batch of ``batch`` images per call) within a time budget.

    Two untimed calls first take the one-off costs (CUDA context, cuDNN algorithm search, ORT
    graph preparation); then calls repeat until ``budget_s`` has passed (at least 3).
    """
    for _ in range(2):
        call()
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < budget_s:
        call()
        calls += 1
    return batch * calls / (time.perf_counter() - started)


def refuse_download(name: str, raw_dir: Path) -> None:
    """Downloader for :func:`pipeline.data.prepare_data`: the device has no network."""
    raise OSError(f"no downloads on the device ({name} into {raw_dir}): pass --fashion-mnist")


# --- steps ------------------------------------------------------------------------------------


def step_environment(check: Check) -> None:
    """Versions, the GPU, ONNX Runtime's providers; with ``--device cuda`` CUDA must work."""
    env = check.environment
    env.update(
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        numpy=np.__version__,
        cuda_available=torch.cuda.is_available(),
        gpu_count=torch.cuda.device_count(),
    )
    if torch.cuda.is_available():
        env["gpu_name"] = torch.cuda.get_device_name()
        env["gpu_capability"] = list(torch.cuda.get_device_capability())
        free, total = torch.cuda.mem_get_info()
        env["gpu_memory_gib"] = round(total / 2**30, 1)
        env["gpu_free_gib"] = round(free / 2**30, 1)
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["ort_available_providers"] = ort.get_available_providers()
        env["ort_device"] = ort.get_device()
    except ImportError as err:
        env["onnxruntime"] = f"not importable: {err}"
    for key, value in env.items():
        say(f"{key:>24}: {value}")
    if check.cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
    if not check.cuda:
        check.note("--device cpu: dry run, CUDA-only assertions are skipped")


def step_data(check: Check) -> None:
    """Prepare Fashion-MNIST with the project's code, into the scratch folder, and map it back.

    As the download stage: fetch (from the ``.gz`` folder, checksums verified), cap, split,
    normalisation statistics, OOD sets; then as the train stage: :func:`load_prepared` mapped.
    """
    from pipeline.data import load_checksums, load_prepared, prepare_data, save_prepared

    source = Path(check.args.fashion_mnist)
    missing = [f for f in FASHION_FILES if not (source / f).is_file()]
    if missing:
        raise FileNotFoundError(f"--fashion-mnist {source} lacks {missing}")
    cfg = section(
        check.params,
        "data",
        dataset="fashion_mnist",
        max_train=check.args.max_train or check.params["data"]["max_train"],
        max_test=check.args.max_test or check.params["data"]["max_test"],
    )
    checksums = {"fashion_mnist": load_checksums(ROOT / "checksums" / "fashion-mnist.sha256")}
    started = time.perf_counter()
    prepared = prepare_data(
        cfg,
        check.work / "raw",
        max_train=cfg.max_train,
        system_dir=source,
        checksums=checksums,
        downloader=refuse_download,
    )
    save_prepared(prepared, check.work / "prepared")
    check.data = load_prepared(check.work / "prepared", mmap=True)
    data = check.data
    check.figure("data", "train_images", len(data.train_idx))
    check.figure("data", "val_images", len(data.val_idx))
    check.figure("data", "test_images", len(data.test))
    check.figure("data", "prepare_seconds", time.perf_counter() - started)
    say(
        f"{data.dataset}: {len(data.train_idx)} train, {len(data.val_idx)} val, "
        f"{len(data.test)} test, image {data.image_shape}, OOD {list(data.ood)}"
    )


def export_checkpoint(check: Check) -> Path | None:
    """The checkpoint exported and timed: the first :data:`EXPORT_RUN` trained (any precision
    or batch size), or ``None``."""
    prefix = EXPORT_RUN + "/"
    return next(
        (path for key, path in check.checkpoints.items() if f"{key}/".startswith(prefix)), None
    )


def run_name(arch: str, loss: str, precision: str = "bf16", batch_size: int | None = None) -> str:
    """A training run's name: ``arch/loss``, then the precision and batch size where they are
    not the defaults (bf16, params.yaml's batch size)."""
    name = f"{arch}/{loss}"
    if precision != "bf16":
        name += f"/{precision}"
    if batch_size is not None:
        name += f"/batch{batch_size}"
    return name


def train_step(
    arch: str, loss: str, precision: str = "bf16", batch_size: int | None = None
) -> Callable[[Check], None]:
    """The step training ``arch`` with ``loss`` on ``--device``, with bf16 autocast (on CUDA)
    or in fp32, at ``batch_size`` (default: params.yaml's)."""

    def step(check: Check) -> None:
        from pipeline.training import train

        if check.data is None:
            raise RuntimeError("no prepared data (the data step failed)")
        key = run_name(arch, loss, precision, batch_size)
        model_cfg = section(check.params, "model", arch=arch, pretrained=False)
        loss_cfg = section(check.params, "loss", name=loss)
        overrides: dict[str, Any] = {"bf16": precision == "bf16", "epochs": check.args.epochs}
        if batch_size is not None:
            overrides["batch_size"] = batch_size
        train_cfg = section(check.params, "train", device=check.args.device, **overrides)
        ends: list[float] = []

        def on_epoch_end(epoch: int) -> None:
            ends.append(time.perf_counter())
            say(f"  {key}: epoch {epoch}/{train_cfg.epochs} done at {ends[-1] - started:.1f} s")

        before = torch.cuda.memory_allocated() if check.cuda else 0
        if check.cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = train(
            check.data,
            model_cfg,
            loss_cfg,
            train_cfg,
            check.work / "checkpoints" / key.replace("/", "_"),
            on_epoch_end=on_epoch_end,
        )
        n_train = len(check.data.train_idx)
        # train() reports one total that includes building the model, moving the data and the
        # first epoch's warm-up (cuDNN autotuning, lazy CUDA init). The steady rate is taken
        # between the ends of the first and the last epoch; each interval still includes that
        # epoch's validation pass and checkpoint save, as in a real run.
        if len(ends) >= 2:
            steady = n_train * (len(ends) - 1) / (ends[-1] - ends[0])
        else:
            steady = n_train / (ends[0] - started)
        figures = {
            "seconds": result.seconds,
            "images_per_s": steady,
            "images_per_s_overall": n_train * result.epochs / result.seconds,
            "best_val_accuracy_pct": 100 * result.best_val_accuracy,
            "last_val_ece_pct": 100 * result.history[-1]["val_ece"],
            "epochs": result.epochs,
            "train_images": n_train,
        }
        if check.cuda:
            peak = torch.cuda.max_memory_allocated()
            # train() picks the device itself: memory it allocated on the GPU (beyond what was
            # held before) proves the model and batches were there.
            if not peak > before:
                raise AssertionError(f"{key}: no CUDA memory allocated, the model was not on CUDA")
            figures["peak_cuda_memory_mib"] = peak / 2**20
            torch.cuda.empty_cache()
        for name, value in figures.items():
            check.figure(f"train {key}", name, value)
        check.checkpoints[key] = check.work / "checkpoints" / key.replace("/", "_") / "best.pt"
        say(
            f"{key}: {result.seconds:.1f} s, {steady:,.0f} images/s, best val accuracy "
            f"{figures['best_val_accuracy_pct']:.2f}%, last val ECE "
            f"{figures['last_val_ece_pct']:.2f}%"
        )

    return step


def step_export(check: Check) -> None:
    """Evaluate (temperature on validation), export to ONNX, verify, as evaluate + export do."""
    from pipeline.checkpoint import load_model
    from pipeline.evaluation import evaluate
    from pipeline.export import export_onnx, verify_export
    from pipeline.model_card import ModelCard

    if check.data is None or export_checkpoint(check) is None:
        raise RuntimeError(f"no {EXPORT_RUN} checkpoint (its training step failed or was skipped)")
    # The corruption study is the evaluate stage's slow part and no GPU question: left out.
    cfg = section(check.params, "evaluate", corruptions=[])
    # On the CPU in float32, as the evaluate stage runs: verify_export compares the ONNX ECE
    # with this one to 1e-4 points, which TF32 GPU convolutions could break at a bin edge.
    model, _ = load_model(export_checkpoint(check))
    started = time.perf_counter()
    result = evaluate(model, check.data, cfg)
    check.figure("export", "evaluate_seconds", time.perf_counter() - started)
    card = ModelCard.from_reference(result.serving, "gpu-check")
    path = check.work / "model.onnx"
    started = time.perf_counter()
    export_onnx(model, card, path)
    check.figure("export", "export_seconds", time.perf_counter() - started)
    test = check.data.test
    started = time.perf_counter()
    figures = verify_export(
        path,
        model,
        test.images,
        test.labels,
        card,
        result.metrics["test"]["scaled"]["ece"],
        cfg.n_bins,
        cfg.batch_size,
    )
    check.figure("export", "verify_seconds", time.perf_counter() - started)
    check.onnx_path, check.card = path, card
    for name in ("onnx_bytes", "max_abs_prob_diff", "accuracy_onnx", "ece_onnx", "ece_abs_diff"):
        check.figure("export", name, figures[name])
    check.figure("export", "temperature", card.temperature)
    say(
        f"exported {path.name} ({figures['onnx_bytes']:,} bytes, T={card.temperature:.3f}); "
        f"verified: accuracy {figures['accuracy_onnx']:.2f}%, ECE {figures['ece_onnx']:.2f}%"
    )


def _model_inputs(check: Check, batch: int) -> np.ndarray:
    """``batch`` test images (repeated if fewer) through serving's preprocessing."""
    from pipeline.preprocessing import to_model_input

    assert check.data is not None and check.card is not None
    images = check.data.test.images
    return to_model_input(images[np.arange(batch) % len(images)], check.card.mean, check.card.std)


def step_onnx_runtime(check: Check) -> None:
    """Images/s of the exported model in ONNX Runtime, CPU provider and (if present) CUDA."""
    import onnxruntime as ort

    from pipeline.model_card import INPUT_NAME, OUTPUT_NAMES

    if check.onnx_path is None:
        raise RuntimeError("no ONNX model (the export step failed)")
    available = ort.get_available_providers()
    providers = {"CPUExecutionProvider": ["CPUExecutionProvider"]}
    if not check.cuda:
        check.note(
            f"--device cpu: measuring the CPU provider only (available: {', '.join(available)})"
        )
    elif "CUDAExecutionProvider" in available:
        providers["CUDAExecutionProvider"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        check.note(
            f"ONNX Runtime here has no CUDA provider (available: {', '.join(available)}): "
            "measuring the CPU provider only"
        )
    inputs = {batch: _model_inputs(check, batch) for batch in INFERENCE_BATCHES}
    probs: dict[str, np.ndarray] = {}
    for name, chain in providers.items():
        session = ort.InferenceSession(str(check.onnx_path), providers=chain)
        if name == "CUDAExecutionProvider":
            session = _cuda_session(check, session, chain)
        for batch, x in inputs.items():

            def call(x: np.ndarray = x, session: Any = session) -> object:
                return session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})

            rate = throughput(call, batch, check.args.bench_seconds)
            check.figure(f"onnxruntime {name}", f"batch_{batch}_images_per_s", rate)
            say(f"{name} batch {batch:>5}: {rate:,.0f} images/s")
        probs[name] = session.run([OUTPUT_NAMES[1]], {INPUT_NAME: inputs[64]})[0]
    if len(probs) == 2:
        diff = np.abs(probs["CUDAExecutionProvider"] - probs["CPUExecutionProvider"])
        check.figure("onnxruntime CUDAExecutionProvider", "max_abs_prob_diff_vs_cpu", diff.max())
        say(f"CUDA vs CPU provider: max |prob diff| {diff.max():.2e} at batch 64")


def _cuda_session(check: Check, session: Any, chain: list[str]) -> Any:
    """``session`` if it really runs on CUDA; else retry once after ``ort.preload_dlls()``.

    ONNX Runtime falls back to the CPU silently (a log line) when the CUDA provider's libraries
    do not load. onnxruntime-gpu from pip can take CUDA/cuDNN from the nvidia-* wheels torch
    uses, via ``preload_dlls()``; whether that was needed is recorded, then a CPU session is an
    error, never a quiet CPU measurement filed under CUDA.
    """
    import onnxruntime as ort

    first = session.get_providers()
    check.figure("onnxruntime CUDAExecutionProvider", "providers_first_try", ",".join(first))
    if first[0] != "CUDAExecutionProvider" and hasattr(ort, "preload_dlls"):
        check.note(f"CUDA session fell back to {first}; retrying after ort.preload_dlls()")
        ort.preload_dlls()
        session = ort.InferenceSession(str(check.onnx_path), providers=chain)
    providers = session.get_providers()
    assert providers[0] == "CUDAExecutionProvider", f"CUDA session runs on {providers}"
    check.figure("onnxruntime CUDAExecutionProvider", "providers", ",".join(providers))
    return session


def step_torch_inference(check: Check) -> None:
    """PyTorch images/s of the same model at batch 1024: bf16 autocast and fp32."""
    from pipeline.checkpoint import load_model

    if export_checkpoint(check) is None or check.card is None:
        raise RuntimeError(f"no {EXPORT_RUN} checkpoint or model card (an earlier step failed)")
    device = torch.device(check.args.device)
    model, _ = load_model(export_checkpoint(check))
    model = model.to(device, memory_format=torch.channels_last).eval()
    # Input already on the device: this times the network, ONNX Runtime's figures include the
    # host-to-device copies a service pays.
    x = torch.from_numpy(_model_inputs(check, TORCH_BATCH)).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    modes = {"fp32": False, "bf16_autocast": True} if check.cuda else {"fp32": False}
    if not check.cuda:
        check.note(
            "--device cpu: PyTorch bf16 inference not measured (training ignores bf16 on CPU)"
        )
    for mode, bf16 in modes.items():

        def call(bf16: bool = bf16) -> torch.Tensor:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            ):
                out = model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        dtype = call().dtype
        if bf16 and dtype != torch.bfloat16:
            raise AssertionError(f"bf16 autocast returned {dtype} logits")
        rate = throughput(call, TORCH_BATCH, check.args.bench_seconds)
        check.figure(f"pytorch {device.type}", f"{mode}_batch_{TORCH_BATCH}_images_per_s", rate)
        say(f"PyTorch {device.type} {mode} batch {TORCH_BATCH}: {rate:,.0f} images/s")


def _ddp_rank(
    rank: int, world: int, port: int, cuda: bool, data: Any, cfgs: tuple[Any, Any, Any], out: str
) -> None:
    """One rank of the DDP training run (``torch.multiprocessing.spawn`` calls it)."""
    from pipeline.distributed import Ranks, process_group
    from pipeline.training import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = Ranks(rank, world, rank, True)
    device = ranks.device(torch.device("cuda" if cuda else "cpu"))
    with process_group(ranks, device):
        started = time.perf_counter()
        result = train(data, *cfgs, Path(out) / "checkpoints", ranks=ranks)
        seconds = time.perf_counter() - started
    if ranks.is_main:
        last = result.history[-1]
        report = {
            "seconds": seconds,
            "val_accuracy": last["val_accuracy"],
            "epochs": len(result.history),
        }
        (Path(out) / "ddp.json").write_text(json.dumps(report))


def _nccl_one_process(check: Check) -> None:
    """A 1-process NCCL group that all-reduces: all a single GPU can show of the DDP path."""
    import torch.distributed as dist

    if not dist.is_nccl_available():
        raise RuntimeError("this torch build has no NCCL")
    torch.cuda.set_device(0)
    init = (check.work / "ddp_init").as_uri()  # file:// rendezvous: no port to collide with
    dist.init_process_group(
        "nccl", init_method=init, world_size=1, rank=0, timeout=datetime.timedelta(seconds=60)
    )
    try:
        tensor = torch.full((4,), 3.0, device="cuda")
        dist.all_reduce(tensor)
        torch.cuda.synchronize()
        if not torch.equal(tensor.cpu(), torch.full((4,), 3.0)):
            raise AssertionError(f"all_reduce over 1 process changed the tensor: {tensor}")
    finally:
        dist.destroy_process_group()


def step_ddp(check: Check) -> None:
    """The training library under DDP, one process per visible GPU (NCCL), as torchrun runs it.

    One GPU: a 1-process NCCL group all-reduces instead (DDP needs two processes to mean
    anything), and the report says so. The CPU dry run trains 2 gloo processes.
    """
    import socket

    import torch.multiprocessing as mp

    world = torch.cuda.device_count() if check.cuda else 2
    if check.data is None:
        raise RuntimeError("no prepared data (the data step failed)")
    if check.cuda and world == 1:
        _nccl_one_process(check)
        check.figure("ddp", "backend", "nccl")
        check.figure("ddp", "processes", 1)
        check.note("one GPU: DDP training not run; a 1-process NCCL group all-reduced OK")
        return
    loss = "ce"
    cfgs = (
        section(check.params, "model", arch="small_cnn", pretrained=False),
        section(check.params, "loss", name=loss),
        section(
            check.params,
            "train",
            device=check.args.device,
            epochs=check.args.epochs,
            bf16=check.cuda,
            nproc_per_node=world,
        ),
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = check.work / "ddp"
    out.mkdir()
    mp.spawn(_ddp_rank, args=(world, port, check.cuda, check.data, cfgs, str(out)), nprocs=world)
    report = json.loads((out / "ddp.json").read_text())
    n_train = len(check.data.train_idx)
    rate = n_train * report["epochs"] / report["seconds"]
    backend = "nccl" if check.cuda else "gloo"
    for name, value in {
        "backend": backend,
        "processes": world,
        "images_per_s_overall": rate,
        "val_accuracy_pct": 100 * report["val_accuracy"],
    }.items():
        check.figure("ddp", name, value)
    say(
        f"DDP small_cnn/{loss}: {world} processes ({backend}), {rate:,.0f} images/s overall, "
        f"val accuracy {100 * report['val_accuracy']:.2f}%"
    )


def step_import_chain(check: Check) -> None:
    """None of :data:`FORBIDDEN_MODULES` was imported by anything above."""
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN_MODULES)
    check.environment["forbidden_modules_imported"] = loaded
    if loaded:
        raise AssertionError(f"the check imported {loaded}; the device has none of them")
    say(f"none of {', '.join(FORBIDDEN_MODULES)} imported")


# --- report -----------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def summary_table(check: Check) -> str:
    """One markdown table: every step's status, then every figure."""
    lines = ["| section | figure | value |", "|---|---|---|"]
    for name, step in check.steps.items():
        if step.ok:
            status = f"ok ({step.seconds:.1f} s)"
        else:
            kind = "FAILED" if step.required else "FAILED (optional)"
            status = f"{kind}: {step.error}".replace("|", "/").replace("\n", " ")[:200]
        lines.append(f"| step | {name} | {status} |")
    for key in ("gpu_name", "torch", "torch_cuda", "onnxruntime", "ort_available_providers"):
        if key in check.environment:
            lines.append(f"| environment | {key} | {_fmt(check.environment[key])} |")
    for group, figures in check.figures.items():
        for name, value in figures.items():
            lines.append(f"| {group} | {name} | {_fmt(value)} |")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_report(check: Check, ok: bool, seconds: float) -> None:
    """Print the summary table and write it, with the JSON of every number, into ``--out``."""
    table = summary_table(check)
    say(f"\n## GPU check summary ({'PASSED' if ok else 'FAILED'}, {seconds:.0f} s)\n\n{table}")
    if check.notes:
        say("\nNotes:\n" + "\n".join(f"- {n}" for n in check.notes))
    payload = {
        "ok": ok,
        "seconds": seconds,
        "device": check.args.device,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(check.args).items()},
        "environment": check.environment,
        "steps": {
            name: {k: v for k, v in vars(step).items() if k != "traceback" or v}
            for name, step in check.steps.items()
        },
        "figures": check.figures,
        "notes": check.notes,
    }
    out = Path(check.args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Plain writes, not pipeline.io: the report must come out even if the package is broken.
    (out / "gpu_check.json").write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    (out / "summary.md").write_text(table + "\n")
    say(f"\nwrote {out / 'gpu_check.json'} and {out / 'summary.md'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; every part of the run is bounded by one of them."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON and the table")
    p.add_argument(
        "--fashion-mnist",
        type=Path,
        default=SYSTEM_FASHION_MNIST,
        help="folder with the four Fashion-MNIST .gz IDX files",
    )
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--max-train",
        type=int,
        default=None,
        help="train+validation pool (default: params.yaml data.max_train)",
    )
    p.add_argument(
        "--max-test",
        type=int,
        default=None,
        help="test images (default: params.yaml data.max_test)",
    )
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--losses", nargs="+", default=list(LOSSES))
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=("bf16", "fp32"),
        default=["bf16"],
        help="train each run with bf16 autocast, in fp32, or both (an A/B of train.bf16)",
    )
    p.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=None,
        help="train each run at these batch sizes (default: params.yaml train.batch_size)",
    )
    p.add_argument(
        "--bench-seconds",
        type=float,
        default=2.0,
        help="timed seconds per throughput figure (after 2 warm-up calls)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every step, report, and return 1 if a required step failed."""
    args = parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("RANKCAL_LOG", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        check = Check(args=args, work=Path(scratch))
        try:
            from pipeline.config import read_params

            check.params = read_params(args.params)
        except Exception as err:  # reported like any failed step
            check.steps["params"] = StepResult(required=True, error=f"{type(err).__name__}: {err}")
            say(f"--- params: FAILED ({check.steps['params'].error})")
        check.run("environment", step_environment)
        check.run("data", step_data)
        for arch in args.archs:
            for loss in args.losses:
                for precision in args.precisions:
                    for batch in args.batch_sizes or [None]:
                        name = run_name(arch, loss, precision, batch)
                        check.run(f"train {name}", train_step(arch, loss, precision, batch))
        check.run("onnx export", step_export)
        check.run("onnxruntime", step_onnx_runtime)
        check.run("pytorch inference", step_torch_inference)
        check.run("ddp", step_ddp, required=False)
        check.run("import chain", step_import_chain)
    ok = all(step.ok for step in check.steps.values() if step.required)
    write_report(check, ok, time.perf_counter() - started)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
