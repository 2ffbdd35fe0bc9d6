"""The process a pass or trainer runs in: torchrun's group, the device, autocast, DDP, cuDNN.

Under `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK set) trainers wrap their model in DDP and image-wise
passes process `shard(ids)`; without it everything runs in one process on one device. Nothing here
re-implements what torch.distributed provides.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
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
            raise RuntimeError("device cuda was asked for, but PyTorch sees no CUDA device; use cpu")
        return torch.device("cuda", local_rank)
    return torch.device(name)


_contexts: dict[str, Context] = {}


def init(device: str = "auto") -> Context:
    """This process's context: the first call joins torchrun's process group (if there is one) and
    picks the device; later calls return the same context."""
    if device in _contexts:
        return _contexts[device]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    _contexts[device] = Context(rank, world, dev)
    return _contexts[device]


def shutdown() -> None:
    """Leave the process group (if joined); the next `init` starts afresh."""
    _contexts.clear()
    if tdist.is_initialized():
        tdist.destroy_process_group()


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


def seed_everything(seed: int, rank: int = 0) -> None:
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


# --- cuDNN -------------------------------------------------------------------------------------------

def set_cudnn(benchmark: bool, deterministic: bool = False) -> None:
    """The one place cuDNN's flags are set. Benchmarking times the convolution algorithms once per
    input shape: worth it for a trainer's fixed crops, a loss for image-wise passes whose every image
    size and scale would be timed anew. Deterministic algorithms rule benchmarking out."""
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = benchmark and not deterministic


def make_deterministic() -> None:
    """Deterministic kernels on CUDA (slower); CPU runs with the same seed are bit-identical anyway."""
    # cuBLAS needs a fixed workspace for reproducible matrix products.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    set_cudnn(benchmark=False, deterministic=True)


# --- precision -----------------------------------------------------------------------------------

def amp_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `enabled` on `device`: bf16 on CUDA where supported, else fp16; None
    (float32) on the CPU, where autocast would be slower than float32."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(enabled: bool, device: torch.device):
    dtype = amp_dtype(enabled, device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def amp_mode(enabled: bool, device: torch.device) -> str:
    """The precision a run trains in, in words for the log."""
    dtype = amp_dtype(enabled, device)
    if dtype is None:
        return "off (float32)" + (", autocast is for CUDA only" if enabled else "")
    return "bf16 autocast" if dtype == torch.bfloat16 else "fp16 autocast with loss scaling"


def loss_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and float32 do not, and get a disabled
    scaler, which passes everything through."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


# --- placement -----------------------------------------------------------------------------------

def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def place(model: torch.nn.Module, ctx: Context, channels_last: bool = False) -> torch.nn.Module:
    """The model on the context's device, NHWC with `channels_last` (faster with cuDNN and oneDNN)."""
    return model.to(ctx.device, memory_format=memory_format(channels_last))


def to_device(images: torch.Tensor, ctx: Context, channels_last: bool = False) -> torch.Tensor:
    """A batch of images (N, 3, H, W) on the device, in the model's memory format."""
    return images.to(ctx.device, non_blocking=True, memory_format=memory_format(channels_last))


def wrap_ddp(model: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """The placed model in DistributedDataParallel under torchrun, as it is otherwise."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
