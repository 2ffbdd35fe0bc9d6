"""The train state: what a trainer needs to continue exactly where it stopped.

One file holds the model, optimiser, scheduler, loss scaler (when it is enabled), the number of
optimiser steps done and the settings of the run that wrote it. Every step's randomness is a
function of (seed, step) (engine.sampling), so no generator state is needed: restoring these and
starting the sampler at the saved step continues the run as if it had never stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wavecam.engine.runtime import Context, barrier, unwrap
from wavecam.errors import WavecamError
from wavecam.io import load_checkpoint, save_checkpoint

log = logging.getLogger("wavecam")

KEYS = ("model", "optimizer", "scheduler", "iteration", "settings")


def settings_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested settings mappings."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix.rstrip(".")] if old != new else []
    changed = []
    for key in sorted(set(old) | set(new), key=str):
        changed += settings_changes(old.get(key), new.get(key), f"{prefix}{key}.")
    return changed


class TrainState:
    """Saving and restoring a trainer's state at `path`.

    `settings` describe the run (plain, nested types). With `strict`, a state written under other
    settings is refused: the user re-runs with those or starts over. Otherwise the differences are
    logged and the run goes on (the end-to-end trainer may be resumed with, say, more iterations).
    `load_model(model, state_dict)` loads the weights (default: strict load_state_dict), for models
    whose checkpoints come in several key layouts; `changes(saved, current)` lists the settings that
    differ (default: the dotted keys whose values differ)."""

    def __init__(self, path: str | os.PathLike, settings: dict, strict: bool = True, name: str = "training",
                 load_model: Callable[[torch.nn.Module, dict], Any] | None = None, restart_hint: str = "",
                 changes: Callable[[Any, dict], list[str]] = settings_changes):
        self.path, self.settings, self.strict, self.name = Path(path), settings, strict, name
        self.load_model = load_model or (lambda model, sd: model.load_state_dict(sd))
        self.restart_hint, self.changes = restart_hint, changes

    def save(self, ctx: Context, step: int, model: torch.nn.Module, opt, sched,
             scaler: torch.amp.GradScaler | None = None, path: str | os.PathLike | None = None) -> None:
        """Rank 0 writes the state atomically to `path` (default: this one's); collective (all ranks
        call it)."""
        if ctx.is_main:
            state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "iteration": step, "settings": self.settings}
            if scaler is not None and scaler.is_enabled():
                state["scaler"] = scaler.state_dict()
            save_checkpoint(path or self.path, state)
            log.info("wrote %s", path or self.path)
        barrier(ctx)  # no rank goes on (or ends the run) before the state is complete

    def restore(self, model: torch.nn.Module, opt, sched, scaler: torch.amp.GradScaler | None = None,
                path: str | os.PathLike | None = None) -> int:
        """Load the state at `path` (default: this one's) into the given objects; the steps done."""
        path = Path(path or self.path)
        state = load_checkpoint(path)
        if isinstance(state, dict) and "config" in state and "settings" not in state:
            state["settings"] = state["config"]  # end-to-end checkpoints that name their settings "config"
        missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise WavecamError(f"{path}: not a train state of {self.name} (no {', '.join(missing)}); "
                               f"{self.restart_hint or 'start over without it'}")
        changed = self.changes(state["settings"], self.settings)
        if changed and self.strict:
            raise WavecamError(f"{path} was written by a {self.name} run with other settings ({', '.join(changed)}); "
                               f"re-run with those settings to resume, or {self.restart_hint or 'start over'}")
        if changed:
            log.warning("resuming with settings that differ from the state's in: %s", ", ".join(changed))
        self.load_model(unwrap(model), state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        log.info("%s: resumed from %s after step %d", self.name, path, state["iteration"])
        return int(state["iteration"])

    def remove(self) -> None:
        """The trainer wrote its final output: the state is no longer needed."""
        self.path.unlink(missing_ok=True)
