"""The training loop: learning, resuming, checkpoints."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pipeline import training
from pipeline.batches import MappedImages
from pipeline.checkpoint import load_checkpoint, load_model
from pipeline.data import load_checksums, load_prepared, prepare_data, save_prepared
from pipeline.distributed import Ranks, process_group
from pipeline.training import train
from tests.conftest import (
    ROOT,
    SYSTEM_FASHION_MNIST,
    configs,
    data_config,
    needs_fashion_mnist,
    synthetic_prepared,
)

# no flips: the toy classes are quadrants, which a horizontal flip would swap
FAST = {"epochs": 4, "batch_size": 32, "lr": 0.05, "threads": 1, "augment": "none"}


class KilledError(Exception):
    pass


@pytest.mark.parametrize("loss", ["ce", "ls", "focal", "mixup", "mrl", "mndcg"])
def test_every_loss_trains_on_toy_data(params: dict[str, Any], tmp_path: Path, loss: str) -> None:
    model, loss_cfg, cfg = configs(params, loss={"name": loss}, train=FAST)
    result = train(synthetic_prepared(), model, loss_cfg, cfg, tmp_path)
    assert result.best_val_accuracy > 0.9  # chance is 0.25
    assert {"train_loss", "val_accuracy", "val_ece"} <= set(result.history[-1])
    if loss in ("mrl", "mndcg"):
        assert "train_rank" in result.history[-1]


@pytest.mark.parametrize("mixing", ["cutmix", "manifold"])
def test_mixing_variants_train(params: dict[str, Any], tmp_path: Path, mixing: str) -> None:
    model, loss_cfg, cfg = configs(params, loss={"mixing": mixing}, train=FAST)
    assert train(synthetic_prepared(), model, loss_cfg, cfg, tmp_path).best_val_accuracy > 0.9


def test_interrupted_run_resumes_to_the_same_weights(
    params: dict[str, Any], tmp_path: Path
) -> None:
    data = synthetic_prepared()
    model, loss_cfg, cfg = configs(params, train=FAST)
    train(data, model, loss_cfg, cfg, tmp_path / "straight")

    def stop_after_first(epoch: int) -> None:
        if epoch == 1:
            raise KilledError

    with pytest.raises(KilledError):
        train(data, model, loss_cfg, cfg, tmp_path / "resumed", on_epoch_end=stop_after_first)
    killed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert killed["epoch"] == 1 and killed["extra"]["seconds"] > 0
    logged: list[int] = []
    result = train(
        data,
        model,
        loss_cfg,
        cfg,
        tmp_path / "resumed",
        log_epoch=lambda epoch, row: logged.append(epoch),
    )
    assert result.resumed_from_epoch == 1
    assert logged == [1, 2, 3, 4]  # the finished epoch is replayed into the log, then 2-4 run
    # The time is the whole training's: the killed process's epoch 1 counts too, and the
    # seconds saved with the last epoch carry into a later resume.
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")["extra"]["seconds"]
    assert killed["extra"]["seconds"] < saved <= result.seconds
    again = train(data, model, loss_cfg, cfg, tmp_path / "resumed")  # nothing left to run
    assert again.resumed_from_epoch == 4 and again.seconds >= saved
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
    assert straight["extra"]["history"] == resumed["extra"]["history"]


def test_training_from_a_mapped_file_equals_training_in_memory(
    params: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_prepared(synthetic_prepared(), tmp_path / "data")
    model, loss_cfg, cfg = configs(params, train={**FAST, "epochs": 2})
    train(load_prepared(tmp_path / "data"), model, loss_cfg, cfg, tmp_path / "memory")
    mapped = load_prepared(tmp_path / "data", mmap=True)
    monkeypatch.setattr(training, "IN_MEMORY_SHARE", 0.0)  # any size counts as too large
    batches: list[int] = []
    real = MappedImages.__getitem__
    monkeypatch.setattr(
        MappedImages, "__getitem__", lambda self, idx: batches.append(len(idx)) or real(self, idx)
    )
    train(mapped, model, loss_cfg, cfg, tmp_path / "disk")
    assert batches and max(batches) == 32  # read per batch, never the whole split
    on_disk = load_checkpoint(tmp_path / "disk" / "last.pt")["model"]
    for key, tensor in load_checkpoint(tmp_path / "memory" / "last.pt")["model"].items():
        assert torch.equal(tensor, on_disk[key]), key


def test_checkpoint_of_other_params_is_not_resumed(params: dict[str, Any], tmp_path: Path) -> None:
    data = synthetic_prepared()
    model, loss_cfg, cfg = configs(params, train={**FAST, "epochs": 1})
    train(data, model, loss_cfg, cfg, tmp_path)
    model, loss_cfg, cfg = configs(params, train={**FAST, "epochs": 2, "lr": 0.01})
    assert train(data, model, loss_cfg, cfg, tmp_path).resumed_from_epoch == 0


def test_best_checkpoint_rebuilds_the_model(params: dict[str, Any], tmp_path: Path) -> None:
    data = synthetic_prepared()
    model, loss_cfg, cfg = configs(params, train={**FAST, "epochs": 1})
    train(data, model, loss_cfg, cfg, tmp_path)
    net, meta = load_model(tmp_path / "best.pt")
    assert meta["image_shape"] == [12, 12, 1] and meta["num_classes"] == 4
    assert net(torch.zeros(2, 1, 12, 12)).shape == (2, 4)


@needs_fashion_mnist
def test_fashion_mnist_subset_far_above_chance(params: dict[str, Any], tmp_path: Path) -> None:
    cfg_data = data_config(params, dataset="fashion_mnist", ood=[], max_test=500)
    data = prepare_data(
        cfg_data,
        tmp_path / "raw",
        max_train=4000,
        system_dir=SYSTEM_FASHION_MNIST,
        checksums={"fashion_mnist": load_checksums(ROOT / "checksums" / "fashion-mnist.sha256")},
    )
    model, loss_cfg, cfg = configs(params, train={"epochs": 3, "batch_size": 64, "threads": 2})
    result = train(data, model, loss_cfg, cfg, tmp_path / "ckpt")
    assert result.best_val_accuracy > 0.7  # chance is 0.1


def test_checkpoint_of_other_code_is_not_resumed(
    params: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = synthetic_prepared()
    model, loss_cfg, cfg = configs(params, train={**FAST, "epochs": 1})
    train(data, model, loss_cfg, cfg, tmp_path)
    monkeypatch.setattr("pipeline.training.source_digest", lambda: "edited code")
    assert train(data, model, loss_cfg, cfg, tmp_path).resumed_from_epoch == 0


def _train_rank(rank: int, port: int, root: str, params: dict[str, Any]) -> None:
    """Rank ``rank`` of 2 trains, writing (if it writes) under ``root/rank<rank>``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = Ranks(rank, 2, rank, True)
    logged: list[int] = []
    with process_group(ranks, torch.device("cpu")):
        model, loss_cfg, cfg = configs(params, loss={"name": "mndcg"}, train=FAST)
        result = train(
            synthetic_prepared(),
            model,
            loss_cfg,
            cfg,
            Path(root) / f"rank{rank}",
            log_epoch=lambda epoch, _row: logged.append(epoch),
            ranks=ranks,
        )
    torch.save({"logged": logged, "result": result.history}, Path(root) / f"result{rank}.pt")


def test_two_processes_train_and_only_rank_0_validates_logs_and_writes(
    params: dict[str, Any], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_train_rank, args=(port, str(tmp_path), params), nprocs=2)
    main, other = (torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in (0, 1))
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["best.pt", "last.pt"]
    assert not (tmp_path / "rank1").exists()
    assert main["logged"] == [1, 2, 3, 4] and other["logged"] == []
    assert main["result"][-1]["val_accuracy"] > 0.9  # the ranking loss learns under DDP
    assert "val_accuracy" not in other["result"][-1]
    # the logged training losses are the mean over both ranks, so both report the same
    for key in ("train_loss", "train_ce", "train_rank"):
        assert main["result"][-1][key] == other["result"][-1][key]
    assert load_checkpoint(tmp_path / "rank0" / "last.pt")["meta"]["fingerprint"] != (
        training.fingerprint(synthetic_prepared(), *configs(params, train=FAST))
    )  # a 2-process checkpoint does not resume a 1-process run


def test_rank_gradient_share_by_hand() -> None:
    """A linear map with weight [1, 0] on x = [1, 2]: grad(ce = out) = [1, 2], grad(rank =
    3 out) = [3, 6]; with w = 0.5, w grad(rank) = [1.5, 3], so the share is
    |[1.5, 3]| / (|[1, 2]| + |[1.5, 3]|) = 1.5 sqrt(5) / (2.5 sqrt(5)) = 0.6; against
    rank = -3 out the gradients oppose, and the share is the same 0.6, not a ratio over 1."""
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0]]))
    out = model(torch.tensor([1.0, 2.0])).sum()
    share = training.rank_gradient_share(model, {"ce": out, "rank": 3 * out}, weight=0.5)
    assert share == pytest.approx(0.6)
    opposed = training.rank_gradient_share(model, {"ce": out, "rank": -3 * out}, weight=0.5)
    assert opposed == pytest.approx(0.6)
    assert model.weight.grad is None  # measured aside: nothing accumulated


def test_measuring_the_rank_share_leaves_training_unchanged(
    params: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, loss_cfg, cfg = configs(params, loss={"name": "mndcg"}, train={**FAST, "epochs": 2})
    monkeypatch.setattr(training, "GRAD_SHARE_EVERY", 3)
    measured = train(synthetic_prepared(), model, loss_cfg, cfg, tmp_path / "measured")
    monkeypatch.setattr(training, "GRAD_SHARE_EVERY", 0)  # never
    plain = train(synthetic_prepared(), model, loss_cfg, cfg, tmp_path / "plain")
    assert all(0 < row["train_rank_grad_share"] < 1 for row in measured.history)
    assert all("train_rank_grad_share" not in row for row in plain.history)
    a = load_checkpoint(tmp_path / "measured" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_where_the_device_computes_it_natively(
    params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, cfg = configs(params, train=FAST)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training.precision(cfg, cuda) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert training.precision(cfg, cpu) == "fp32"  # emulated bf16 would be slower
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert training.precision(cfg, cpu) == "bf16"
    fp32 = configs(params, train={**FAST, "bf16": False})[2]
    assert training.precision(fp32, cpu) == training.precision(fp32, cuda) == "fp32"


def test_training_learns_in_bf16_on_the_cpu_and_its_checkpoint_says_so(
    params: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forced on (any CPU runs bf16 autocast, emulated where not native): it still learns, and
    a bf16 checkpoint is not resumed by an fp32 run of the same params."""
    monkeypatch.setattr(training, "native_bf16", lambda device: True)
    model, loss_cfg, cfg = configs(params, loss={"name": "mndcg"}, train=FAST)
    result = train(synthetic_prepared(), model, loss_cfg, cfg, tmp_path)
    assert result.best_val_accuracy > 0.9
    bf16 = load_checkpoint(tmp_path / "last.pt")["meta"]["fingerprint"]
    data = synthetic_prepared()
    assert bf16 == training.fingerprint(data, model, loss_cfg, cfg, 1, "bf16")
    assert bf16 != training.fingerprint(data, model, loss_cfg, cfg, 1, "fp32")


def test_batchnorm_sees_float32_under_cpu_bf16_autocast() -> None:
    """Without the hook a BatchNorm after a convolution gets bf16 under CPU autocast (and its
    statistics in bf16 turned a small ResNet's validation logits to NaN: test_pipeline_e2e)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    seen: list[torch.dtype] = []
    net[1].register_forward_hook(lambda _m, args, _out: seen.append(args[0].dtype))
    x = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
        training.batchnorm_in_fp32(net)
        net(x)
    assert seen == [torch.bfloat16, torch.float32]
    assert list(net.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]


def _norms(monkeypatch: pytest.MonkeyPatch, bad: set[int], value: float) -> list[int]:
    """Make ``clip_grad_norm_`` report ``value`` as the gradient norm on the steps in ``bad``
    (0-based, counted over the run); it still clips as usual. Returns the call counter."""
    calls = [0]
    clip = torch.nn.utils.clip_grad_norm_

    def reporting(parameters: Any, max_norm: float) -> torch.Tensor:
        norm = clip(parameters, max_norm)
        calls[0] += 1
        return torch.tensor(value) if calls[0] - 1 in bad else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", reporting)
    return calls


def _one_epoch_in_small_batches(params: dict[str, Any]) -> tuple[Any, ...]:
    """Toy data, CE, one epoch of 8-image batches: the data, the three sections and the steps."""
    data = synthetic_prepared()
    small = {**FAST, "epochs": 1, "batch_size": 8}
    model, loss_cfg, cfg = configs(params, loss={"name": "ce"}, train=small)
    return data, model, loss_cfg, cfg, -(-len(data.train_idx) // 8)


def test_a_step_with_nonfinite_gradients_is_skipped_and_counted(
    params: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, model, loss_cfg, cfg, steps = _one_epoch_in_small_batches(params)
    assert steps > 1 / training.MAX_SKIPPED_SHARE  # so one skipped step is within the share
    clean = train(data, model, loss_cfg, cfg, tmp_path / "clean")
    assert "train_skipped_steps" not in clean.history[0]  # a clean run's metrics are unchanged

    _norms(monkeypatch, bad={0}, value=float("inf"))
    skipped = train(data, model, loss_cfg, cfg, tmp_path / "skipped")
    assert skipped.history[0]["train_skipped_steps"] == 1.0
    first = load_checkpoint(tmp_path / "clean" / "last.pt")["model"]
    other = load_checkpoint(tmp_path / "skipped" / "last.pt")["model"]
    assert any(not torch.equal(first[k], other[k]) for k in first)  # one update fewer


def test_an_epoch_with_too_many_nonfinite_steps_stops_with_a_clear_error(
    params: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, model, loss_cfg, cfg, steps = _one_epoch_in_small_batches(params)
    bad = int(training.MAX_SKIPPED_SHARE * steps) + 1  # one over the share
    calls = _norms(monkeypatch, bad=set(range(bad)), value=float("nan"))
    match = f"in epoch 1: {bad} of its {steps} steps had NaN or inf gradients"
    with pytest.raises(training.DivergedError, match=match):
        train(data, model, loss_cfg, cfg, tmp_path)
    assert calls[0] == steps  # the epoch ran out, then the error
    assert not (tmp_path / "best.pt").exists()  # nothing is kept as the best model


def test_nonfinite_validation_logits_stop_with_a_hint_at_bf16(
    params: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nan_logits(*args: Any, **kwargs: Any) -> np.ndarray:
        return np.full((len(args[1]), 4), np.nan, dtype=np.float32)

    monkeypatch.setattr(training, "predict_logits", nan_logits)
    monkeypatch.setattr(training, "native_bf16", lambda device: True)
    model, loss_cfg, cfg = configs(params, loss={"name": "ce"}, train={**FAST, "epochs": 1})
    with pytest.raises(training.DivergedError, match=r"validation logits.*train.bf16: false"):
        train(synthetic_prepared(), model, loss_cfg, dataclasses.replace(cfg, bf16=True), tmp_path)
    monkeypatch.setattr(training, "native_bf16", lambda device: False)
    with pytest.raises(training.DivergedError, match=r"lower train\.lr"):
        train(synthetic_prepared(), model, loss_cfg, cfg, tmp_path / "fp32")


def test_cpu_name_is_the_first_processors_model_with_family_and_model() -> None:
    cpuinfo = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC\nflags\t\t: fpu avx512_bf16\n\n"
        "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Other\n"
    )
    assert training.cpu_name(cpuinfo) == "AMD EPYC (family 25, model 17)"
    assert training.cpu_name("model name\t: Intel(R) Xeon(R)\n") == "Intel(R) Xeon(R)"
    assert training.device_name(torch.device("cpu"))  # this machine's, whatever it is
