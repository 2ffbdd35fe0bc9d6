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

from wavecam.engine.loop import Hook, LossFn
from wavecam.engine.provenance import forget_file, trained_by
from wavecam.engine.runtime import Context, amp_dtype, barrier, init, loss_scaler, seed_everything, set_cudnn
from wavecam.engine.sampling import BatchPlan, epoch_steps, train_loader
from wavecam.engine.state import TrainState
from wavecam.engine.trainer import Trainer
from wavecam.io import is_complete
from wavecam.multi_stage.pass_io import loader_options
from wavecam.multi_stage.workspace import resume_path, tensorboard_dir

log = logging.getLogger("wavecam")

# A log line and TensorBoard scalars every so many steps (the epoch-based passes have no flag for it).
LOG_ITERS = 20


def claim_training(args, name: str, outputs: list[str], maker: dict) -> Context | None:
    """The context of the training pass `name`, its random generators seeded; None when all its
    `outputs` exist already and were trained by the same `maker` or by a run that left no record
    (engine.provenance.trained_by): they are kept. Outputs that are retrained (--force True, another
    maker) are removed first; the pass records `maker` once it has written them (record_file)."""
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
                 end_of_epoch: Callable[[int], None] | None = None) -> Trainer:
    """Train `epochs` epochs of `dataset` in global batches of `plan` (minus the epochs a resume
    state already holds), saving the state after each; returns the trainer, whose `finish` writes
    the pass's weights. Training passes let cuDNN time its algorithms for their fixed crops
    (--cudnn_benchmark); `end_of_epoch(epoch)` runs on every rank after each epoch."""
    set_cudnn(args.cudnn_benchmark, args.deterministic)
    per_epoch = epoch_steps(len(dataset), plan)
    scaler = loss_scaler(ctx.device, amp_dtype(args.amp, ctx.device))
    state = TrainState(resume_path(args.work_space, name), {k: str(v) for k, v in settings.items()}, name=name,
                       restart_hint="pass --force True to start over")
    trainer = Trainer(name, ctx, model, opt, sched, scaler, state, stop=per_epoch * epochs, plan=plan,
                      seed=args.seed, log_iters=min(LOG_ITERS, per_epoch), save_iters=per_epoch,
                      tb_dir=tensorboard_dir(args.work_space, name), steps_per_epoch=per_epoch)
    start = trainer.open(fresh=args.force or not args.resume)
    loader = train_loader(dataset, plan, ctx.rank, args.seed, start, trainer.stop, "epoch", **loader_options(args, ctx))

    def epoch_done(t: int, values: dict[str, float]) -> None:
        epoch = t // per_epoch
        log.info("%s epoch %d/%d: %s", name, epoch, epochs, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        if end_of_epoch is not None:
            end_of_epoch(epoch)

    trainer.fit(loader, loss_of, hooks=[Hook(per_epoch, epoch_done)])
    return trainer
