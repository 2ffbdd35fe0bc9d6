"""Training checkpoints: `<work_dir>/checkpoints/iter_<t>.pth` with model, optimiser, scheduler,
iteration and config, written by rank 0 and read back by a resumed run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wavecam import dist
from wavecam.end_to_end.config import Config, as_dict, config_changes
from wavecam.io import WavecamError, load_checkpoint, save_checkpoint
from wavecam.models.e2e import WaveAFA, load_wave_afa_weights

log = logging.getLogger("wavecam")
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "iteration", "config")


def save_state(path: Path, net: WaveAFA, opt, sched, scaler, t: int, cfg: Config, ctx: dist.Context) -> None:
    """Rank 0 writes the checkpoint (collective: all ranks call it). No generator state: every
    micro-batch seeds its own (batching.micro_batch_seed)."""
    if ctx.is_main:
        state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "iteration": t, "config": as_dict(cfg)}
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        save_checkpoint(path, state)
        log.info("wrote %s", path)
    dist.barrier(ctx)  # no rank goes on (or ends the run) before the checkpoint is complete


def restore(path: Path, net: WaveAFA, opt, sched, scaler, cfg: Config) -> int:
    """Load a checkpoint of save_state into model, optimiser and scheduler; returns the iteration to
    continue from."""
    ckpt = load_checkpoint(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise WavecamError(f"{path}: not a training checkpoint of end_to_end/train.py (no {', '.join(missing)}); "
                           "to start from other weights set model.pretrained, to score it use evaluate.py")
    load_wave_afa_weights(net, ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    changed = config_changes(ckpt["config"], cfg)
    if changed:
        log.warning("resuming with a config that differs from the checkpoint's in: %s", ", ".join(changed))
    t = int(ckpt["iteration"])
    log.info("resumed from %s at iteration %d", path, t)
    return t


def resume_path(resume: str | None, work_dir: Path) -> Path | None:
    if resume != "auto":
        return Path(resume) if resume else None
    return latest_checkpoint(work_dir)


def latest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest iteration in `<work_dir>/checkpoints`, if any."""
    found = sorted(Path(work_dir, "checkpoints").glob("iter_*.pth"), key=lambda p: p.stem)
    return found[-1] if found else None


def checkpoint_path(work_dir: str | os.PathLike, iteration: int) -> Path:
    # Zero-padded so that names sort in iteration order.
    return Path(work_dir) / "checkpoints" / f"iter_{iteration:07d}.pth"
