"""Data-parallel helpers: torchrun's environment, the launch command, BatchNorm over all ranks
(two gloo processes on the CPU, checked against numbers computed by hand)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pipeline.config import ConfigError
from pipeline.distributed import (
    AllReduceBatchNorm2d,
    Ranks,
    broadcast_from_main,
    mean_over_ranks,
    synchronise_batchnorm,
    torchrun_command,
)
from pipeline.models import build_model

CPU = torch.device("cpu")


def test_ranks_come_from_torchruns_environment() -> None:
    assert Ranks.from_env({}) == Ranks(0, 1, 0, False)
    ranks = Ranks.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.launched) == (3, 4, 1, True)
    assert ranks.distributed and not ranks.is_main
    assert list(range(10))[ranks.shard()] == [3, 7]
    assert ranks.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert ranks.device(CPU) == CPU
    with pytest.raises(ValueError, match="RANK 4 is outside WORLD_SIZE 4"):
        Ranks.from_env({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


def test_torchrun_command_is_standalone_unless_a_rendezvous_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alone = torchrun_command(2, CPU, "stages.train", ["--params", "p.yaml"], {})
    assert alone[1:] == [
        *("-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"),
        *("-m", "stages.train", "--params", "p.yaml"),
    ]
    machines = torchrun_command(2, CPU, "stages.train", [], {"PET_RDZV_ENDPOINT": "host:29400"})
    assert "--standalone" not in machines
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="nproc_per_node is 2 but this machine has 1 GPU"):
        torchrun_command(2, torch.device("cuda"), "stages.train", [], {})


def test_alone_the_collectives_are_the_identity() -> None:
    alone = Ranks()
    assert broadcast_from_main({"epoch": 3}, alone) == {"epoch": 3}
    values = torch.tensor([1.0, 2.0])
    assert mean_over_ranks(values, alone) is values


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batchnorm_rank(rank: int, port: int, out: str) -> None:
    """Rank ``rank`` of 2: normalise its half of a 4-image batch of 1x1 images, backpropagate
    a per-image weight, and save what it saw."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        bn = synchronise_batchnorm(nn.Sequential(nn.BatchNorm2d(1)), CPU)[0]
        assert isinstance(bn, AllReduceBatchNorm2d)
        x = torch.tensor([[1.0, 2.0], [3.0, 6.0]][rank]).view(2, 1, 1, 1).requires_grad_(True)
        y = bn(x)
        (y * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)[rank::2]).sum().backward()
        shared = broadcast_from_main({"from": rank}, Ranks(rank, 2, rank, True))
        mean = mean_over_ranks(torch.tensor([float(rank)]), Ranks(rank, 2, rank, True))
        torch.save(
            {
                "y": y.detach().flatten(),
                "dx": x.grad.flatten(),
                "dw": bn.weight.grad,
                "running": (bn.running_mean, bn.running_var),
                "shared": shared,
                "mean": mean,
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_batchnorm_statistics_and_gradients_are_the_global_batchs(tmp_path: Path) -> None:
    """Rank 0 holds images 1 and 2, rank 1 images 3 and 6 (the order is rows 0::2 and 1::2 of
    the global batch [1, 3, 2, 6]). By hand: mean 3, biased variance (4+1+0+9)/4 = 3.5, so
    image v becomes (v - 3)/sqrt(3.5 + eps); running mean 0.1 * 3 = 0.3, running variance
    0.9 + 0.1 * 3.5 * 4/3; and the gradients those of single-process BatchNorm on [1, 3, 2, 6]."""
    mp.spawn(_batchnorm_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    std = math.sqrt(3.5 + 1e-5)
    torch.testing.assert_close(ranks[0]["y"], torch.tensor([-2 / std, -1 / std]))
    torch.testing.assert_close(ranks[1]["y"], torch.tensor([0.0, 3 / std]))
    for seen in ranks:
        torch.testing.assert_close(seen["running"][0], torch.tensor([0.3]))
        torch.testing.assert_close(seen["running"][1], torch.tensor([0.9 + 0.1 * 3.5 * 4 / 3]))
        assert seen["shared"] == {"from": 0}
        torch.testing.assert_close(seen["mean"], torch.tensor([0.5]))

    alone = nn.BatchNorm2d(1)
    x = torch.tensor([1.0, 3.0, 2.0, 6.0]).view(4, 1, 1, 1).requires_grad_(True)
    (alone(x) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)).sum().backward()
    # global row order [1, 3, 2, 6] is rank 0's rows 0 and 2, rank 1's rows 1 and 3
    torch.testing.assert_close(x.grad.flatten()[0::2], ranks[0]["dx"])
    torch.testing.assert_close(x.grad.flatten()[1::2], ranks[1]["dx"])
    torch.testing.assert_close(ranks[0]["dw"] + ranks[1]["dw"], alone.weight.grad)


def _group_of_one(port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)


def test_synchronised_model_keeps_its_state_dict_keys(tmp_path: Path) -> None:
    """The checkpoint of a synchronised model loads into the plain model (evaluate, export)."""
    _group_of_one(_free_port())
    try:
        plain = build_model("small_cnn", num_classes=3, in_channels=1, pretrained=False)
        keys = list(plain.state_dict())
        synced = synchronise_batchnorm(plain, CPU)
        kinds = {type(m) for m in synced.modules()}
        assert AllReduceBatchNorm2d in kinds and nn.BatchNorm2d not in kinds
        assert list(synced.state_dict()) == keys
        fresh = build_model("small_cnn", num_classes=3, in_channels=1, pretrained=False)
        fresh.load_state_dict(synced.state_dict())
        x = torch.rand(2, 1, 12, 12)
        torch.testing.assert_close(fresh.eval()(x), synced.eval()(x))  # eval: running stats
    finally:
        dist.destroy_process_group()
