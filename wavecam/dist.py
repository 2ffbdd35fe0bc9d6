"""torchrun / DistributedDataParallel helpers.

Under `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK set) training passes wrap their model in DDP and
image-wise passes process `shard(ids)`; without it everything runs in one process on one
device. Nothing here re-implements what torch.distributed provides.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init(device: str = "auto") -> Context:
    """Join the torchrun process group if there is one (once per process) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world, local_rank, dev)


def shard(items: list, ctx: Context) -> list:
    """This rank's share of an image list (strided, so ranks get similar image mixes)."""
    return items[ctx.rank::ctx.world_size]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        tdist.barrier()


def sum_confusions(cms, ctx: Context) -> None:
    """Sum every rank's ConfusionMatrix objects (matrices and image counts) in place onto all ranks."""
    if not ctx.distributed:
        return
    counts = torch.tensor([[*cm.mat.ravel(), cm.n_images] for cm in cms], dtype=torch.int64)
    # gloo reduces CPU tensors, nccl CUDA ones.
    counts = counts.to(ctx.device if tdist.get_backend() == "nccl" else "cpu")
    tdist.all_reduce(counts)
    for cm, row in zip(cms, counts.cpu().numpy()):
        cm.mat, cm.n_images = row[:-1].reshape(cm.mat.shape), int(row[-1])


def setup_logging(log_file: str | os.PathLike | None, ctx: Context | None = None,
                  datefmt: str = "%H:%M:%S") -> None:
    """Rank 0 logs INFO to stderr and to `log_file`; other ranks only warnings. `datefmt` is the
    timestamp's strftime format (the end-to-end trainer's runs last days, so it adds the date)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    main = ctx is None or ctx.is_main
    root.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and main:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
