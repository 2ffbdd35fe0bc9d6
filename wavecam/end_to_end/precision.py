"""The precision a run computes in: float32, or bf16 / fp16 autocast on CUDA with `train.amp`."""

from __future__ import annotations

import contextlib

import torch

from wavecam.end_to_end.config import Config
from wavecam.optim import autocast_dtype


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA when `train.amp` is set (fp16 where bf16 is unsupported); None (float32) otherwise."""
    return autocast_dtype(cfg.train.amp, device)


def autocast(cfg: Config, device: torch.device):
    dtype = amp_dtype(cfg, device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def amp_mode(cfg: Config, device: torch.device) -> str:
    """The precision a run trains in, in words for the log."""
    dtype = amp_dtype(cfg, device)
    if dtype is None:
        return "off (float32)" + (", train.amp is for CUDA only" if cfg.train.amp else "")
    return "bf16 autocast" if dtype == torch.bfloat16 else "fp16 autocast with loss scaling"
