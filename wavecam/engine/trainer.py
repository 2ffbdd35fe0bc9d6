"""The ceremony every trainer shares, in one place (detectron2's trainer and hooks, plainly).

A trainer states its model, optimiser, schedule and loss, and leaves the rest to `Trainer`:
- the train state: `open(fresh)` removes it first where the run starts over (--force, --resume
  False), then restores it where there is one; `resume(path)` restores a given file;
- `fit(loader, loss_of, hooks)`: engine.loop.fit with, for every trainer alike, a MetricLogger line
  (losses, lr, ETA, images per second) and TensorBoard scalars `<name>/<value>` every `log_iters`
  steps and after the last, the state saved every `save_iters` steps, and the NaN guard's message
  saying what was kept;
- `finish(weights)`: after the last step, the final weights written by rank 0, the state removed
  and the TensorBoard file closed, every rank waiting until they are.

`loss_of(batch, t, k)` is the one loss signature: the losses of micro-batch k of step t, "loss"
minimised, the others logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from wavecam.engine.logging import MetricLogger, add_scalars, tensorboard
from wavecam.engine.loop import Hook, LossFn, fit
from wavecam.engine.runtime import Context, barrier
from wavecam.engine.sampling import BatchPlan
from wavecam.engine.state import TrainState
from wavecam.io import save_checkpoint

log = logging.getLogger("wavecam")


class Trainer:
    """One training run of `name` from step `start` (after `open`/`resume`) to `stop`.

    `state` is None for a run that keeps no train state (it restarts when killed). `save_iters` 0
    saves no state during the run (a trainer may save in its own hooks, the end-to-end trainer's
    checkpoints with `save`). `kept` says what a diverged run leaves (default: the state, if saved).
    `tb_dir` None writes no TensorBoard file."""

    def __init__(self, name: str, ctx: Context, model: torch.nn.Module, opt: torch.optim.Optimizer, sched,
                 scaler: torch.amp.GradScaler, state: TrainState | None, *, stop: int, plan: BatchPlan, seed: int,
                 log_iters: int, tb_dir: str | os.PathLike | None, save_iters: int = 0,
                 steps_per_epoch: int | None = None, kept: Callable[[], str] | None = None):
        self.name, self.ctx, self.model, self.opt, self.sched, self.scaler = name, ctx, model, opt, sched, scaler
        self.state, self.stop, self.plan, self.seed = state, stop, plan, seed
        self.log_iters, self.save_iters, self.steps_per_epoch = log_iters, save_iters, steps_per_epoch
        self.kept = kept or self._state_kept
        self.writer = tensorboard(tb_dir, ctx) if tb_dir is not None else None
        self.start = 0

    # --- the train state -------------------------------------------------------------------------
    def open(self, fresh: bool) -> int:
        """The step to start from: the saved state's, or 0 where there is none or with `fresh` (the
        state is then removed first)."""
        if fresh and self.ctx.is_main:
            self.state.remove()
        barrier(self.ctx)  # no rank looks for the state while it is being removed
        return self.resume(self.state.path if self.state.path.is_file() else None)

    def resume(self, path: str | os.PathLike | None) -> int:
        """Restore the train state at `path` (None: start from step 0); the step to start from."""
        if path is not None:
            self.start = self.state.restore(self.model, self.opt, self.sched, self.scaler, path=path)
        return self.start

    def save(self, t: int, path: str | os.PathLike | None = None) -> None:
        """The state after step t, at `path` (default: the state's own file); collective."""
        self.state.save(self.ctx, t, self.model, self.opt, self.sched, self.scaler, path=path)

    def _state_kept(self) -> str:
        if self.state is not None and self.state.path.exists():
            return f"the last good state {self.state.path} is kept"
        return "nothing was saved"

    # --- the loop --------------------------------------------------------------------------------
    def fit(self, batches: Iterable[Any], loss_of: LossFn, hooks: Sequence[Hook] = ()) -> None:
        """Steps `start`..`stop`-1 over `batches`; `hooks` run after the logging and before the save."""
        meter = MetricLogger(self.start, self.stop, self.plan.global_batch, self.log_iters)
        every = [Hook(self.log_iters, self._scalars), *hooks]
        if self.save_iters:
            every.append(Hook(self.save_iters, self._save_hook, at_end=False))
        fit(self.name, self.model, self.opt, self.sched, self.scaler, batches, self.start, self.stop, loss_of,
            self.plan, self.ctx, self.seed, hooks=every, meter=meter, steps_per_epoch=self.steps_per_epoch,
            kept=self.kept)

    def _scalars(self, t: int, values: dict[str, float]) -> None:
        add_scalars(self.writer, self.name, values, t)

    def _save_hook(self, t: int, values: dict[str, float]) -> None:
        self.save(t)

    # --- the end -----------------------------------------------------------------------------------
    def finish(self, weights: dict[str | os.PathLike, dict] | None = None,
               after_saving: Callable[[], None] | None = None, keep_state: bool = False) -> None:
        """The end of training: rank 0 writes `weights` (path -> state dict), then runs `after_saving`
        (a record of what made them, say), then removes the train state unless `keep_state`; the
        TensorBoard file is closed; no rank goes on before the files are complete."""
        if self.ctx.is_main:
            for path, sd in (weights or {}).items():
                save_checkpoint(path, sd)
                log.info("wrote %s", path)
            if after_saving is not None:
                after_saving()
            if self.state is not None and not keep_state:
                self.state.remove()
        self.close()
        barrier(self.ctx)  # the weights are complete before any rank (or the next pass) reads them

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
