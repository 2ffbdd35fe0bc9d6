"""One training loop for every trainer: steps, gradient accumulation, the NaN guard and hooks.

A trainer supplies `loss_of(micro_batch, t, k) -> {"loss": minimised, ...components}` (`LossFn`: the
losses of micro-batch k of step t; engine.trainer.Trainer is the usual way in); the loop runs
the optimiser steps from `start` to `stop`, each over this process's micro-batches, steps the
scheduler, and calls its hooks (logging, evaluation, saving) every so many steps. Before each
micro-batch's forward, torch's generators are seeded from (seed, step, micro-batch) (see
engine.sampling.micro_batch_seed), so dropout and stochastic depth are functions of the step too.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from wavecam.engine.runtime import Context
from wavecam.engine.sampling import BatchPlan, micro_batch_seed
from wavecam.errors import WavecamError

LossFn = Callable[[Any, int, int], dict[str, torch.Tensor]]  # (micro-batch, step, its index k) -> losses
ChunkLoss = Callable[[Any, int], dict[str, torch.Tensor]]  # one step's: (micro-batch, k) -> losses


class Diverged(Exception):
    """A micro-batch's loss is not finite; the loop says where, and what was kept."""

    def __init__(self, losses: dict[str, torch.Tensor]):
        super().__init__("loss not finite")
        self.losses = losses


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   chunks: Sequence[Any], loss_of: ChunkLoss, seed_of: Callable[[int], int] | None = None
                   ) -> list[dict[str, torch.Tensor]]:
    """One optimiser step over this process's micro-batches `chunks`; each one's losses, in order.

    The backward of each chunk's loss is taken divided by the number of chunks, so the gradient is
    the mean of the chunks' gradients; DistributedDataParallel averages it over the processes, in the
    last backward only (the others run under `no_sync`), so the step's gradient is the mean over all
    micro-batches of the global batch, whichever way processes and accumulation share them. Where the
    loss is a mean over samples this is the gradient of the whole batch's loss. A non-finite loss
    raises `Diverged` before its backward, so the parameters keep their last finite values."""
    opt.zero_grad(set_to_none=True)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    chunk_losses = []
    for k, chunk in enumerate(chunks):
        last = k == len(chunks) - 1
        with contextlib.nullcontext() if last or not ddp else model.no_sync():
            if seed_of is not None:
                torch.manual_seed(seed_of(k))
            losses = loss_of(chunk, k)
            if not math.isfinite(losses["loss"].item()):
                raise Diverged(losses)
            scaler.scale(losses["loss"] / len(chunks)).backward()
        chunk_losses.append(losses)
    scaler.step(opt)
    scaler.update()
    return chunk_losses


def micro_batches(batch: dict, size: int) -> list[dict]:
    """A collated batch cut into consecutive batches of `size` samples."""
    n = len(next(iter(batch.values())))
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def mean_losses(records: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """The mean over micro-batches of each loss (as floats)."""
    return {k: sum(r[k].item() if torch.is_tensor(r[k]) else float(r[k]) for r in records) / len(records)
            for k in records[0]}


@dataclass
class Hook:
    """`fn(steps_done, values)` after every `every` steps, and after the last one if `at_end`."""

    every: int
    fn: Callable[[int, dict[str, float]], None]
    at_end: bool = True


def fit(name: str, model: torch.nn.Module, opt: torch.optim.Optimizer, sched, scaler: torch.amp.GradScaler,
        batches: Iterable[Any], start: int, stop: int, loss_of: LossFn,
        plan: BatchPlan, ctx: Context, seed: int, hooks: Sequence[Hook] = (), meter=None,
        steps_per_epoch: int | None = None, kept: Callable[[], str] | None = None) -> None:
    """Optimiser steps `start`..`stop`-1, one per batch of `batches` (this process's share of each
    global batch, cut into `plan.steps` micro-batches). `loss_of(micro_batch, step, k)` returns the
    losses of micro-batch k. After each step the scheduler steps, `meter` (engine.logging.MetricLogger
    over the same steps) records the mean losses and the lr, and the hooks run (their time left out of
    the meter's). A non-finite loss ends the run with one message saying where, and `kept()` what was
    saved before."""
    model.train()
    bar = tqdm(total=stop - start, initial=0, desc=name, disable=not ctx.is_main, leave=False)
    try:
        steps = meter.iterations(batches) if meter is not None else zip(range(start, stop), batches)
        for t, batch in steps:
            try:
                values = accumulated_step(model, opt, scaler, batch, t, loss_of, plan, ctx, seed)
            except Diverged as e:
                raise WavecamError(_divergence(name, e.losses, t, steps_per_epoch, kept)) from None
            sched.step()
            if meter is not None:
                meter.step_done(t, **values)
            bar.update()
            bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
            for hook in hooks:
                if (t + 1) % hook.every == 0 or (hook.at_end and t + 1 == stop):
                    with meter.untimed() if meter is not None else contextlib.nullcontext():
                        hook.fn(t + 1, values)
                    model.train()
    finally:
        bar.close()


def accumulated_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: Any,
                     t: int, loss_of: LossFn, plan: BatchPlan,
                     ctx: Context, seed: int) -> dict[str, float]:
    """Step t over this process's `batch`, cut into `plan.steps` micro-batches, each seeded from
    (seed, t, its index in the global batch); the step's lr and the mean losses over the micro-batches."""
    chunks = micro_batches(batch, plan.micro) if plan.steps > 1 else [batch]
    lr = opt.param_groups[0]["lr"]  # the step's, before the scheduler moves on
    records = optimizer_step(model, opt, scaler, chunks, functools.partial(_at_step, loss_of, t),
                             functools.partial(_micro_seed, seed, t, ctx.rank * plan.steps))
    return {"lr": lr, **mean_losses(records)}


def _at_step(loss_of, t: int, chunk: Any, k: int) -> dict[str, torch.Tensor]:
    return loss_of(chunk, t, k)


def _micro_seed(seed: int, t: int, first: int, k: int) -> int:
    return micro_batch_seed(seed, t, first + k)


def _divergence(name: str, losses: dict[str, torch.Tensor], t: int, steps_per_epoch: int | None,
                kept: Callable[[], str] | None) -> str:
    where = f"at iteration {t}"
    if steps_per_epoch:
        where += f" (epoch {t // steps_per_epoch + 1}, step {t % steps_per_epoch + 1})"
    parts = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items() if k != "loss")
    return (f"the loss became {losses['loss'].item()} {where} of {name}" + (f" ({parts})" if parts else "")
            + f"; {kept() if kept else 'nothing was saved'}. Likely causes: a learning rate or a loss weight too "
            "high, input scales or a crop size that leave a batch without labelled pixels, or fp16 autocast "
            "(--amp, train.amp end to end); lower the learning rate first, check the others, then re-run.")
