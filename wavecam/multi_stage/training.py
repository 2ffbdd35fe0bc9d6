"""The epochs of a multi-stage training pass (train_cam, train_recam, train_wavecam, train_irn) on
the engine, with resume.

After every epoch the train state (model, optimiser, scheduler, steps done) is written atomically
to `<work_space>/resume/<pass>.pth`; re-running the same command continues from it. Batches and
augmentations are keyed by (seed, epoch, index) (engine.sampling, "epoch" keying: the batches of
torch's DistributedSampler), so a resumed run sees what an uninterrupted one would and ends with
the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from wavecam.engine.loop import Hook, fit
from wavecam.engine.provenance import forget_file, trained_by
from wavecam.engine.runtime import Context, amp_dtype, barrier, init, loss_scaler, seed_everything, set_cudnn
from wavecam.engine.sampling import BatchPlan, epoch_steps, train_loader
from wavecam.engine.state import TrainState
from wavecam.io import is_complete
from wavecam.multi_stage.common import loader_options
from wavecam.multi_stage.workspace import resume_path

log = logging.getLogger("wavecam")

LossFn = Callable[[dict], dict[str, torch.Tensor]]  # batch -> losses, "loss" is minimised


def begin(args, name: str, outputs: list[str], maker: dict) -> Context | None:
    """The context of the training pass `name`, its random generators seeded; None when all its
    `outputs` exist already and were trained by the same `maker` or by a run that left no record
    (engine.provenance.trained_by). Outputs that are retrained (--force True, another maker) are
    removed first; the pass records `maker` once it has written them (record_file)."""
    ctx = init(args.device)
    if all(is_complete(p) for p in outputs):
        why = None if args.force else trained_by(outputs[0], maker)
        if why is None and not args.force:
            log.info("%s exists: skipping %s (--force True to retrain)", outputs[0], name)
            return None
        log.warning("%s: retraining %s: %s", name, outputs[0], why or "--force True")
        if ctx.is_main:
            for path in outputs:
                forget_file(path)
    barrier(ctx)  # no rank decides on the outputs while they are being removed
    seed_everything(args.seed, ctx.rank)
    return ctx


def train_epochs(name: str, args, ctx: Context, dataset: Dataset, plan: BatchPlan, epochs: int,
                 model: torch.nn.Module, opt: torch.optim.Optimizer, sched, loss_of: LossFn, settings: dict,
                 end_of_epoch: Callable[[int], None] | None = None) -> TrainState:
    """Train `epochs` epochs of `dataset` in global batches of `plan` (minus the epochs a resume
    state already holds), saving the state after each; returns it, for the pass to remove once its
    output is written. Training passes let cuDNN time its algorithms for their fixed crops
    (--cudnn_benchmark); `end_of_epoch(epoch)` runs on every rank after each epoch."""
    set_cudnn(args.cudnn_benchmark, args.deterministic)
    per_epoch = epoch_steps(len(dataset), plan)
    stop = per_epoch * epochs
    scaler = loss_scaler(ctx.device, amp_dtype(args.amp, ctx.device))
    state = TrainState(resume_path(args.work_space, name), {k: str(v) for k, v in settings.items()}, name=name,
                       restart_hint="pass --force True to start over")
    if (args.force or not args.resume) and ctx.is_main:
        state.remove()
    barrier(ctx)  # no rank looks for the state while it is being removed
    start = state.restore(model, opt, sched, scaler) if state.path.is_file() else 0
    loader = train_loader(dataset, plan, ctx.rank, args.seed, start, stop, "epoch", **loader_options(args, ctx))

    def epoch_done(t: int, values: dict[str, float]) -> None:
        epoch = t // per_epoch
        log.info("%s epoch %d/%d: %s", name, epoch, epochs, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        if end_of_epoch is not None:
            end_of_epoch(epoch)
        state.save(ctx, t, model, opt, sched, scaler)

    def kept() -> str:
        return f"the last good state {state.path} is kept" if state.path.exists() else "nothing was saved"

    fit(name, model, opt, sched, scaler, loader, start, stop, lambda batch, t, k: loss_of(batch), plan, ctx,
        args.seed, hooks=[Hook(per_epoch, epoch_done)], steps_per_epoch=per_epoch, kept=kept)
    return state
