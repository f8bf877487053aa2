"""The training loop: seeded, resumable, channels-last, on CPU or CUDA, with bf16 autocast where
the device computes bf16 natively, in one process or data-parallel over several (torchrun, DDP).

Checkpoints: ``last.pt`` after every epoch (resume point) and ``best.pt`` at the best
validation accuracy (the model evaluated and exported; with ``train.bn_statistics`` raw or
mixed, its BatchNorm statistics are recomputed after the last epoch). A rerun with the same
configuration resumes after the last finished epoch; every epoch's randomness is derived from
``(seed, epoch)``, so a resumed run ends with the same weights as an uninterrupted one.

Several processes (see :mod:`pipeline.distributed`) split each global batch of
``train.batch_size`` images between them and average their gradients (DDP), so the learning
rate keeps its meaning. Each mixes within its own rows. Rank 0 alone validates and writes
checkpoints and logs; the others wait for it at the next step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.batches import (
    MappedImages,
    Normalizer,
    as_tensors,
    num_batches,
    photo_transform,
    training_batches,
)
from pipeline.bn_statistics import Mixing, has_batchnorm, recompute_bn, tracking_batchnorms
from pipeline.calibration import softmax
from pipeline.checkpoint import load_checkpoint, load_model, save_checkpoint
from pipeline.config import ConfigError, LossConfig, ModelConfig, TrainConfig
from pipeline.data.prepared import PreparedData
from pipeline.distributed import (
    ALONE,
    Ranks,
    broadcast_from_main,
    mean_over_ranks,
    synchronise_batchnorm,
)
from pipeline.inference import predict_logits
from pipeline.metrics.calibration import expected_calibration_error
from pipeline.models import MixableNet, build_model, param_groups
from pipeline.models.weights import file_digest
from pipeline.objective import compute_loss, mix_layer

logger = logging.getLogger(__name__)

EpochLog = Callable[[int, dict[str, float]], None]
# A memory-mapped training split larger than this share of physical memory is read per batch
# instead of copied into one tensor: the copy would compete with the model for memory.
IN_MEMORY_SHARE = 0.25
# Every this many steps, a ranking loss's share of the gradient is measured (two extra backward
# passes, about 1% of an epoch's time at this interval); 0: never.
GRAD_SHARE_EVERY = 50
# A step with NaN or inf gradients is skipped (a rare one should not end a long run); more than
# this share of an epoch's steps stops the run: such a model is not learning. Measured: bf16 on
# the CPU, a ResNet-18 on 16x16 images in 8-image batches, whose last stage sees 1x1 feature
# maps, had gradients of 1e20-1e32 there from the first step in 6 of 6 seeds (fp32: at most
# 300); where some steps stayed finite it ended at chance accuracy.
MAX_SKIPPED_SHARE = 0.05


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports (also written to the metrics file by the stage)."""

    best_val_accuracy: float
    best_epoch: int
    epochs: int
    resumed_from_epoch: int
    seconds: float
    history: list[dict[str, float]]


class DivergedError(RuntimeError):
    """Training produced NaN or infinite values it cannot recover from."""


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device is 'cuda' but torch sees no CUDA device here: use 'auto' (the GPU when "
            "there is one) or 'cpu'"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def source_digest() -> str:
    """Hash of this package's source: a checkpoint written by other code is not resumed.

    DVC reruns training when the code changes; without this, the rerun would find the old
    run's finished checkpoint and skip training with the new code.
    """
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(
    data: PreparedData,
    model: ModelConfig,
    loss: LossConfig,
    train: TrainConfig,
    world_size: int = 1,
    precision: str = "fp32",
) -> str:
    """Hash of everything that shapes the weights; a checkpoint resumes only a matching run."""
    # Where a run executes does not change what it computes; how many processes share the batch
    # does (each mixes within its own rows), and it is the world size that counts, however
    # torchrun was asked for it.
    ignored = {"device", "threads", "nproc_per_node"}
    payload = {
        "world_size": world_size,
        # train.bf16 on a CPU without native bf16 computes in fp32: the precision used counts
        "precision": precision,
        "code": source_digest(),
        "data": [data.dataset, len(data.train_idx), len(data.val_idx), data.mean, data.std],
        "model": dataclasses.asdict(model),
        # the file's content, not only its path: new weights under the same name retrain
        "weights": None if model.weights is None else file_digest(Path(model.weights)),
        "loss": dataclasses.asdict(loss),
        "train": {k: v for k, v in dataclasses.asdict(train).items() if k not in ignored},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train(
    data: PreparedData,
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    cfg: TrainConfig,
    checkpoint_dir: Path,
    *,
    log_epoch: EpochLog | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    ranks: Ranks = ALONE,
) -> TrainResult:
    """Train a model on ``data`` and keep its best-validation-accuracy checkpoint.

    Args:
        data: Prepared dataset with its split and normalisation statistics.
        model_cfg: The ``model`` section.
        loss_cfg: The ``loss`` section.
        cfg: The ``train`` section.
        checkpoint_dir: Holds ``last.pt`` (resume point) and ``best.pt``.
        log_epoch: Called with ``(epoch, metrics)`` after each epoch (e.g. dvclive).
        on_epoch_end: Called with the finished epoch number after its checkpoint is saved.
        ranks: This process's place when several train together (their process group must be
            up, see :func:`pipeline.distributed.process_group`); only rank 0 validates, calls
            ``log_epoch`` and ``on_epoch_end`` and writes to ``checkpoint_dir``.

    Returns:
        A summary of the run; on ranks other than 0 it holds the training losses only.

    Raises:
        ConfigError: If a global batch cannot give every rank two images.
    """
    if cfg.batch_size < 2 * ranks.world_size:
        raise ConfigError(
            f"train.batch_size {cfg.batch_size} is too small for {ranks.world_size} processes: "
            f"each needs at least 2 images of every batch"
        )
    started = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = ranks.device(select_device(cfg.device))
    torch.manual_seed(cfg.seed)
    height, width, channels = data.image_shape
    model = build_model(
        model_cfg.arch,
        num_classes=data.num_classes,
        in_channels=channels,
        pretrained=model_cfg.pretrained,
        weights=None if model_cfg.weights is None else Path(model_cfg.weights),
    )
    # channels-last is faster on CUDA and, measured on a 2-core CPU, ~2x faster there too.
    model.to(device, memory_format=torch.channels_last)
    if ranks.distributed and cfg.sync_batchnorm:
        model = synchronise_batchnorm(model, device)
    if cfg.bn_statistics == "mixed":
        mix_layer(model, loss_cfg)  # a mixing layer the network lacks fails now, not after training
    if cfg.freeze_bn and not (model_cfg.pretrained or model_cfg.weights):
        logger.warning(
            "train.freeze_bn with a network trained from scratch: its BatchNorm layers keep "
            "their initial statistics (mean 0, variance 1) and do not normalise"
        )
    logger.info("training on %s in %s", device, precision(cfg, device))
    if precision(cfg, device) == "bf16" and device.type == "cpu":
        batchnorm_in_fp32(model)
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.lr, cfg.backbone_lr_scale),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    scheduler = _scheduler(optimizer, cfg)
    meta = {
        "arch": model_cfg.arch,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "image_shape": [height, width, channels],
        "mean": data.mean,
        "std": data.std,
        "dataset": data.dataset,
        "fingerprint": fingerprint(
            data, model_cfg, loss_cfg, cfg, ranks.world_size, precision(cfg, device)
        ),
    }
    # Rank 0 reads the resume point and hands it to the others: they may not see its disk.
    saved = broadcast_from_main(
        _saved_state(checkpoint_dir / "last.pt", meta["fingerprint"]) if ranks.is_main else None,
        ranks,
    )
    state = _resume(saved, model, optimizer, scheduler)
    resumed_from = state["epoch"]
    # Seconds the earlier, interrupted runs of this training spent up to their last saved epoch:
    # the reported time is the whole training's, not this process's.
    carried = float(state.get("seconds", 0.0))
    if log_epoch is not None and ranks.is_main:  # replay: a fresh log directory has every epoch
        for row in state["history"]:
            log_epoch(int(row["epoch"]), row)

    x_train, y_train = _training_images(data, device)
    val_images = data.train.images[data.val_idx]
    val_labels = data.train.labels[data.val_idx]
    normalize = Normalizer(data.mean, data.std, device)
    step = _step_function(model, loss_cfg, device, ranks)
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        parts = _train_epoch(step, model, optimizer, x_train, y_train, normalize, cfg, epoch, ranks)
        scheduler.step()
        if not ranks.is_main:
            state["history"].append({"epoch": float(epoch), **parts})
            state["epoch"] = epoch
            continue
        logits = predict_logits(model, val_images, data.mean, data.std, batch_size=512)
        if not np.isfinite(logits).all():
            raise DivergedError(
                _diverged("the validation logits are NaN or inf", epoch, cfg, device)
            )
        probs = softmax(logits)
        row = {
            "epoch": float(epoch),
            "lr": optimizer.param_groups[0]["lr"],
            **parts,
            "val_accuracy": float((probs.argmax(1) == val_labels).mean()),
            "val_ece": expected_calibration_error(probs, val_labels),
        }
        state["history"].append(row)
        if row["val_accuracy"] > state["best_val_accuracy"]:
            state.update(best_val_accuracy=row["val_accuracy"], best_epoch=epoch)
            save_checkpoint(checkpoint_dir / "best.pt", model, meta=meta, epoch=epoch)
        state["epoch"] = epoch
        state["seconds"] = carried + time.perf_counter() - started
        save_checkpoint(
            checkpoint_dir / "last.pt",
            model,
            meta=meta,
            epoch=epoch,
            optimizer=optimizer,
            scheduler=scheduler,
            extra=_progress(state),
        )
        logger.info("epoch %d/%d %s", epoch, cfg.epochs, _fmt(row))
        if log_epoch is not None:
            log_epoch(epoch, row)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    if cfg.bn_statistics != "trained" and ranks.is_main:
        _recompute_statistics(
            checkpoint_dir / "best.pt", state["best_epoch"], data, loss_cfg, cfg, device
        )
    return TrainResult(
        best_val_accuracy=state["best_val_accuracy"],
        best_epoch=state["best_epoch"],
        epochs=cfg.epochs,
        resumed_from_epoch=resumed_from,
        seconds=carried + time.perf_counter() - started,
        history=state["history"],
    )


def _recompute_statistics(
    path: Path,
    epoch: int,
    data: PreparedData,
    loss_cfg: LossConfig,
    cfg: TrainConfig,
    device: torch.device,
) -> None:
    """Give the chosen model (``best.pt``) BatchNorm statistics from the training split's raw
    images, or from them each followed by ``loss.num_mixes`` mixed copies (``loss.alpha``,
    mixed as ``loss.mixing`` says), as ``train.bn_statistics`` says. The recompute starts from
    fresh statistics, so after a kill it runs again to the same result."""
    started = time.perf_counter()
    model, meta = load_model(path)
    if not has_batchnorm(model):
        logger.warning("train.bn_statistics: %s: the model has no BatchNorm", cfg.bn_statistics)
        return
    mixing = None
    if cfg.bn_statistics == "mixed":
        mixing = Mixing(
            loss_cfg.alpha,
            loss_cfg.num_mixes,
            seed=cfg.seed,
            layer=mix_layer(model, loss_cfg),
            cutmix=loss_cfg.mixing == "cutmix",
        )
    fresh = recompute_bn(
        model.to(device),
        data.train.images,
        data.mean,
        data.std,
        cfg.batch_size,
        indices=data.train_idx,
        mixing=mixing,
    )
    save_checkpoint(path, fresh, meta=meta, epoch=epoch)
    logger.info(
        "BatchNorm statistics of the chosen model recomputed from %s training images (%.1f s)",
        "raw and mixed" if mixing else "raw",
        time.perf_counter() - started,
    )


def _training_images(
    data: PreparedData, device: torch.device
) -> tuple[torch.Tensor | MappedImages, torch.Tensor]:
    """The training split as one tensor on ``device`` (fast, the default), or, when the images
    are a memory-mapped file too large to hold comfortably, left on disk and read per batch."""
    images, labels = data.train.images, data.train.labels[data.train_idx]
    nbytes = len(data.train_idx) * int(np.prod(images.shape[1:]))
    if isinstance(images, np.memmap) and nbytes > IN_MEMORY_SHARE * _physical_memory():
        logger.info(
            "training images (%.1f GB) stay on disk and are read batch by batch", nbytes / 1e9
        )
        return MappedImages(images, data.train_idx, device), torch.from_numpy(labels).to(device)
    return as_tensors(images[data.train_idx], labels, device)


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class _Objective(nn.Module):
    """The model and its loss as one module, so that one call is one forward pass for DDP.

    DDP synchronises gradients through its wrapper's forward, and the ranking losses call the
    model's ``features`` and ``head_from``, not its forward: wrapped this way, DDP sees the
    whole objective.
    """

    def __init__(self, model: MixableNet, cfg: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, detach: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return compute_loss(self.model, x, y, self.cfg, rng, detach=detach)


def _step_function(
    model: MixableNet, cfg: LossConfig, device: torch.device, ranks: Ranks
) -> nn.Module:
    objective = _Objective(model, cfg)
    if not ranks.distributed:
        return objective
    # Every parameter takes part in every loss, so DDP needs no search for unused ones.
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(objective, device_ids=ids)


def _train_mode(step: nn.Module, model: nn.Module, freeze_bn: bool) -> None:
    """Training mode; with ``freeze_bn`` the BatchNorm layers stay in evaluation mode."""
    step.train()
    if freeze_bn:
        for layer in tracking_batchnorms(model):
            layer.eval()


def _augmentation(augment: str, size: tuple[int, ...]) -> dict[str, Any]:
    """:func:`training_batches`' augmentation arguments for ``train.augment``."""
    if augment in ("crop", "crop_flip"):
        return {"crop": (4, augment == "crop_flip")}
    if augment == "photo":
        return {"photo": photo_transform((int(size[0]), int(size[1])))}
    return {}


def _train_epoch(
    step: nn.Module,
    model: MixableNet,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor | MappedImages,
    labels: torch.Tensor,
    normalize: Normalizer,
    cfg: TrainConfig,
    epoch: int,
    ranks: Ranks,
) -> dict[str, float]:
    """One pass over the training split; returns the mean of each loss part (over ranks)."""
    _train_mode(step, model, cfg.freeze_bn)
    device = images.device
    # Every source of randomness is a function of (seed, epoch): resuming replays it exactly.
    # The order and the crops are the same on every rank (each takes its rows of the batch);
    # dropout and the mixing differ per rank, as each mixes within its own rows.
    torch.manual_seed(cfg.seed * 100_003 + epoch + 7_919 * ranks.rank)
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    rng = np.random.default_rng([cfg.seed, epoch, *([ranks.rank] if ranks.distributed else [])])
    min_size = 2 * ranks.world_size
    totals: dict[str, float] = {}
    steps = num_batches(len(images), cfg.batch_size, min_size)
    augment = _augmentation(cfg.augment, tuple(images.shape[1:3]))
    batches = training_batches(
        images, labels, cfg.batch_size, generator, **augment, shard=ranks.shard(), min_size=min_size
    )
    bar = tqdm(
        batches,
        total=steps,
        desc=f"epoch {epoch}/{cfg.epochs}",
        leave=False,
        disable=None if ranks.is_main else True,
    )
    shares: list[float] = []
    skipped = 0
    measured = isinstance(step, _Objective) and step.cfg.name in ("mrl", "mndcg")
    for index, (batch, y, share) in enumerate(bar):
        x = normalize(batch).contiguous(memory_format=torch.channels_last)
        measure = measured and GRAD_SHARE_EVERY > 0 and index % GRAD_SHARE_EVERY == 0
        with _autocast(device, enabled=cfg.bf16 and native_bf16(device)):
            loss, parts = step(x, y, rng, detach=not measure)
        if measure:
            shares.append(rank_gradient_share(model, parts, step.cfg.weight))
            parts = {k: v.detach() for k, v in parts.items()}
        # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the
        # batch makes that the gradient of the global batch's mean when the rows do not split
        # evenly (a final, smaller batch).
        scale = share * ranks.world_size
        optimizer.zero_grad(set_to_none=True)
        (loss if scale == 1 else loss * scale).backward()
        if cfg.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        else:
            norm = nn.utils.get_total_norm(
                [p.grad for p in model.parameters() if p.grad is not None]
            )
        # A step with NaN or infinite gradients is skipped, as torch's GradScaler skips them:
        # taken, it would make every weight NaN (MAX_SKIPPED_SHARE). DDP has summed the
        # gradients already, so every rank skips the same steps.
        if torch.isfinite(norm):
            optimizer.step()
        else:
            skipped += 1
        for key, value in {"loss": loss.detach(), **parts}.items():
            totals[key] = totals.get(key, 0.0) + float(value)
        bar.set_postfix(loss=f"{totals['loss'] / max(bar.n, 1):.3f}", refresh=False)
    # on the training device: NCCL reduces only GPU tensors
    means = torch.tensor([totals[k] / steps for k in totals], dtype=torch.float64, device=device)
    means = mean_over_ranks(means, ranks)
    out = {f"train_{k}": float(v) for k, v in zip(totals, means, strict=True)}
    if shares:
        out["train_rank_grad_share"] = float(np.mean(shares))
    if skipped > MAX_SKIPPED_SHARE * steps:
        what = f"{skipped} of its {steps} steps had NaN or inf gradients"
        raise DivergedError(_diverged(what, epoch, cfg, device))
    if skipped:  # only then: the metrics of a run without any stay as they were
        out["train_skipped_steps"] = float(skipped)
        logger.warning(
            "epoch %d: %d of %d steps skipped, their gradients NaN or inf%s",
            epoch,
            skipped,
            steps,
            " (bf16; train.bf16: false trains in fp32)" if precision(cfg, device) == "bf16" else "",
        )
    return out


def _diverged(what: str, epoch: int, cfg: TrainConfig, device: torch.device) -> str:
    hint = (
        "; bf16 is the likely cause: `train.bf16: false` trains in fp32 (small feature maps and "
        "small batches make bf16 statistics unstable)"
        if precision(cfg, device) == "bf16"
        else "; a lower train.lr or a train.grad_clip may help"
    )
    return f"training diverged in epoch {epoch}: {what}{hint}"


def rank_gradient_share(model: nn.Module, parts: dict[str, torch.Tensor], weight: float) -> float:
    """``||w grad(rank)|| / (||grad(ce)|| + ||w grad(rank)||)`` over the model's parameters: the
    ranking loss's share of the gradient's magnitude at weight ``w`` (0: none, 0.5: as large as
    cross-entropy's, near 1: it dominates). The sum of the two, not the norm of their sum, is
    the denominator: the two gradients can point apart, and the norm of their sum be smaller
    than either.

    Measured on the rank's own graph (``parts`` not detached), without touching ``.grad``; in
    data-parallel runs it is not measured (DDP's gradient hooks must see one backward per step).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    ce = torch.autograd.grad(parts["ce"], params, retain_graph=True, allow_unused=True)
    rank = torch.autograd.grad(weight * parts["rank"], params, retain_graph=True, allow_unused=True)
    flat = [
        (torch.zeros_like(p) if c is None else c, torch.zeros_like(p) if r is None else r)
        for p, c, r in zip(params, ce, rank, strict=True)
    ]
    rank_norm = float(torch.sqrt(sum((r.float() ** 2).sum() for _, r in flat)))
    ce_norm = float(torch.sqrt(sum((c.float() ** 2).sum() for c, _ in flat)))
    return rank_norm / (ce_norm + rank_norm) if ce_norm + rank_norm > 0 else 0.0


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, gamma=cfg.lr_gamma)


def _saved_state(path: Path, expected: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was written by this configuration, else None."""
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    if ckpt["meta"]["fingerprint"] != expected:
        logger.warning("ignoring %s: it was written by a run with other parameters or code", path)
        return None
    logger.info("resuming from %s after epoch %d", path, ckpt["epoch"])
    return ckpt


def _resume(
    ckpt: dict[str, Any] | None, model: nn.Module, optimizer: Any, scheduler: Any
) -> dict[str, Any]:
    if ckpt is None:
        return {
            "epoch": 0,
            "best_val_accuracy": -1.0,
            "best_epoch": 0,
            "history": [],
            "seconds": 0.0,
        }
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return {"epoch": ckpt["epoch"], **ckpt["extra"]}


def _progress(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("best_val_accuracy", "best_epoch", "history", "seconds")}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively, so bf16 autocast speeds training up.

    CUDA GPUs (bf16 runs on every GPU torch supports here; Ampere and newer do it in tensor
    cores) and CPUs with AVX512-BF16 or AMX, as torch detects them. Elsewhere the CPU would
    emulate bf16, slower than fp32, so training stays fp32. Measured on a 2-core AMD EPYC with
    AVX512-BF16: a small_cnn step 1.8x faster (docs/benchmarks.md, bench/train_step.py).
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return bool(torch.cpu._is_avx512_bf16_supported() or amx())


def device_name(device: torch.device) -> str:
    """What trains on ``device``: the GPU's name, or the CPU's model with its family and model
    numbers (a virtual machine's model name alone, "AMD EPYC", names several generations).

    A study row records it because numerics, and so one seed's figures, differ between
    processor models: the same CE row, code, params and seed gave ECE 5.38% on one CPU and
    3.88% on another.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        return cpu_name(Path("/proc/cpuinfo").read_text())
    except OSError:  # no /proc (not Linux): what the platform says
        return platform.processor() or platform.machine()


def cpu_name(cpuinfo: str) -> str:
    """The first processor's ``model name`` of a /proc/cpuinfo text, with ``(family F, model
    M)`` where it gives them. Read by hand: three fields do not warrant a dependency."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def batchnorm_in_fp32(model: nn.Module) -> None:
    """Feed every BatchNorm layer float32 under CPU bf16 autocast.

    CPU autocast leaves batch_norm in its input's dtype, so bf16 activations got bf16 batch
    statistics: a ResNet-18 on a 53-image folder (batch 8, 16x16 images) gave NaN validation
    logits after its first epoch (tests/test_pipeline_e2e.py); with this hook it trains, as in
    fp32. The hook only casts the input; the next convolution autocasts back to bf16, and the
    checkpoint is unchanged.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(lambda _module, args: (args[0].float(), *args[1:]))


def precision(cfg: TrainConfig, device: torch.device) -> str:
    """``"bf16"`` when training autocasts to bf16 on ``device`` (``train.bf16`` and native
    support), else ``"fp32"``."""
    return "bf16" if cfg.bf16 and native_bf16(device) else "fp32"


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _fmt(row: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
