"""Training checkpoints: `<work_dir>/checkpoints/iter_<t>.pth`, the engine's train state (model,
optimiser, scheduler, iteration and the config as its settings), written by rank 0 and read back by
a resumed run, test.py and evaluate.py."""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

from wavecam.end_to_end.config import Config, as_dict, config_changes
from wavecam.engine.state import TrainState
from wavecam.models.e2e import load_wave_afa_weights

log = logging.getLogger("wavecam")

RESUME_FIX = ("Give --resume a checkpoint of a run with this config's model.backbone and dataset, or set them to the "
              "checkpoint's (--set model.backbone=...).")


def train_state(cfg: Config) -> TrainState:
    """The trainer's state, saved to `checkpoints/iter_<t>.pth` every `train.eval_iters` iterations (no
    generator state: every micro-batch seeds its own, engine.sampling.micro_batch_seed). A run may be
    resumed with another config (more iterations, say): the differences are logged. The model loads
    through load_wave_afa_weights, which also takes AFA's key layout."""
    return TrainState(checkpoint_path(cfg.work_dir, cfg.train.max_iters), as_dict(cfg), strict=False,
                      name="end_to_end/train.py",
                      load_model=partial(load_wave_afa_weights, name="the --resume checkpoint", fix=RESUME_FIX),
                      changes=lambda saved, current: config_changes(saved, cfg),
                      restart_hint="to start from other weights set model.pretrained, to score it use evaluate.py")


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
