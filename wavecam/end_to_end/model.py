"""The network and its optimiser: WaveAFA built from the config (and its pretrained weights), the
DDP wrapper's inside, the last stage's grid, AdamW with AFA's warm-up and poly schedule."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch

from wavecam.end_to_end.config import Config
from wavecam.io import load_checkpoint
from wavecam.models.e2e import WaveAFA, load_pretrained, load_wave_afa_weights

log = logging.getLogger("wavecam")

CHECKPOINT_FIX = ("Give --checkpoint one written by a run of this config's model.backbone and dataset, or "
                  "set them to the checkpoint's (--set model.backbone=...).")


def build_model(cfg: Config, num_classes: int) -> WaveAFA:
    """WaveAFA for `num_classes` foreground classes (the network counts the background too), started
    from `model.pretrained` where it is set."""
    m = cfg.model
    net = WaveAFA(m.backbone, num_classes=num_classes + 1, stride=tuple(m.stride),
                  embedding_dim=m.embedding_dim, pooling=m.pooling, drop_path_rate=m.drop_path_rate)
    if m.pretrained is not None:
        log.info("pretrained: %s", load_pretrained(net, m.pretrained))
    else:
        log.info("pretrained: none, random initialisation (model.pretrained is null)")
    return net


def grid_size(size: Sequence[int], stride: int = 16) -> tuple[int, int]:
    """The last stage's grid for an input of `size`: every stage rounds up."""
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


def poly_warmup_adamw(model: WaveAFA, cfg: Config) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the model's groups and AFA's schedule, stepped once per iteration t (from 0):
    a linear warm-up from `warmup_ratio` x lr to lr over `warmup_iter` iterations, then
    lr * (1 - t / max_iters) ** power."""
    opt_cfg, sched_cfg = cfg.optimizer, cfg.scheduler
    lr = opt_cfg.learning_rate
    opt = torch.optim.AdamW(model.param_groups(lr, opt_cfg.weight_decay), lr=lr,
                            betas=tuple(opt_cfg.betas), eps=1e-8)
    warmup, ratio = sched_cfg.warmup_iter, sched_cfg.warmup_ratio
    max_iters, power = cfg.train.max_iters, sched_cfg.power

    def factor(t: int) -> float:
        if t < warmup:
            return 1 - (1 - t / warmup) * (1 - ratio)
        return (1 - min(t, max_iters - 1) / max_iters) ** power

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def load_trained(cfg: Config, num_classes: int, checkpoint: str | os.PathLike, device: torch.device
                 ) -> tuple[WaveAFA, tuple[str, ...], int | None]:
    """The network of `checkpoint` (train.py's, AFA's or an mmseg SegFormer's) for test.py and
    evaluate.py: (network on `device`, the parts the checkpoint held, its iteration if it says)."""
    net = build_model(cfg, num_classes).to(device)
    ckpt = load_checkpoint(checkpoint)
    parts = load_wave_afa_weights(net, ckpt, name=str(checkpoint), fix=CHECKPOINT_FIX)
    return net, parts, ckpt.get("iteration") if isinstance(ckpt, dict) else None
