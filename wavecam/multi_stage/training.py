"""The epoch loop shared by train_cam, train_recam, train_wavecam and train_irn, with resume.

After every epoch a full state (model, optimiser, scheduler, epoch) is written atomically to
`<work_space>/resume/<pass>.pth`; re-running the same command continues from it. Every epoch's
randomness follows from (seed, epoch), so a resumed run draws the same batches and crops as an
uninterrupted one and ends with the same weights.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from wavecam import dist
from wavecam.io import WavecamError, load_checkpoint, save_checkpoint
from wavecam.multi_stage.common import unwrap
from wavecam.multi_stage.workspace import resume_path
from wavecam.optim import optimizer_step

log = logging.getLogger("wavecam")

StepFn = Callable[[dict], dict[str, torch.Tensor]]  # batch -> losses, "loss" is minimised


def seed_epoch(seed: int, epoch: int, rank: int, loader: DataLoader) -> None:
    """Everything random in an epoch follows from (seed, epoch): the sampler's order, each
    sample's augmentation (see data.datasets.Augmented) and anything drawn from the global RNGs."""
    s = seed + 1000 * epoch + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch, seed)


class ResumeState:
    """The resume file of one training pass; `settings` must match to resume from it."""

    def __init__(self, args, name: str, settings: dict):
        self.path = resume_path(args.work_space, name)
        self.name = name
        self.settings = {k: str(v) for k, v in settings.items()}
        if (args.force or not args.resume) and self.path.exists():
            self.path.unlink()

    def restore(self, model: torch.nn.Module, opt, sched, scaler: torch.amp.GradScaler) -> int:
        """Load the saved state into model/opt/sched; the number of finished epochs (0 if none)."""
        if not self.path.is_file():
            return 0
        state = load_checkpoint(self.path)
        if state.get("settings") != self.settings:
            changed = sorted(k for k in self.settings if state.get("settings", {}).get(k) != self.settings[k])
            raise WavecamError(
                f"{self.path} was written by a {self.name} run with other settings ({', '.join(changed)}); "
                "re-run with those settings to resume, or pass --force True to start over"
            )
        unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        log.info("%s: resuming after epoch %d from %s", self.name, state["epoch"], self.path)
        return state["epoch"]

    def save(self, epoch: int, model: torch.nn.Module, opt, sched, scaler: torch.amp.GradScaler) -> None:
        state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch, "settings": self.settings}
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        save_checkpoint(self.path, state)

    def finish(self) -> None:
        """The pass wrote its final output: the resume state is no longer needed."""
        if self.path.exists():
            os.remove(self.path)


def fit(
    name: str,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched,
    loader: DataLoader,
    epochs: int,
    step: StepFn,
    state: ResumeState,
    ctx: dist.Context,
    seed: int,
    end_of_epoch: Callable[[int], None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Train `epochs` epochs (minus those already done), saving the resume state after each.
    `scaler`: the loss scaler of fp16 autocast (wavecam.optim.loss_scaler); none otherwise."""
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    for ep in range(state.restore(model, opt, sched, scaler), epochs):
        seed_epoch(seed, ep, ctx.rank, loader)
        model.train()
        bar = tqdm(loader, desc=f"{name} {ep + 1}/{epochs}", disable=not ctx.is_main)
        for i, batch in enumerate(bar):
            losses = step(batch)
            loss = losses["loss"]
            if not math.isfinite(loss.item()):
                kept = f"the last good state {state.path} is kept" if state.path.exists() else "nothing was saved"
                raise WavecamError(f"{name}: the loss became {loss.item()} at epoch {ep + 1}, step {i + 1}; "
                                   f"{kept}. Lower the learning rate and re-run.")
            optimizer_step(loss, opt, scaler)
            sched.step()
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()})
        summary = ", ".join(f"{k} {v.item():.4f}" for k, v in losses.items())
        log.info("%s epoch %d/%d: %s", name, ep + 1, epochs, summary)
        if end_of_epoch is not None:
            end_of_epoch(ep + 1)
        if ctx.is_main:
            state.save(ep + 1, model, opt, sched, scaler)
        dist.barrier(ctx)
