"""train_seg (stage 3): a fully supervised segmenter trained on the pseudo labels, as the paper's
step 3 does with deeplab-pytorch ("replacing the ground-truth mask with the generated pseudo mask").

deeplab-pytorch's configs/voc12.yaml by default: DeepLab-v2 ResNet-101 with multi-scale inputs
(a loss on each output), frozen BatchNorm, SGD (momentum 0.9, weight decay 5e-4; the head's weights
x10 and biases x20 without decay), lr 2.5e-4 decayed by poly 0.9 updated every 10 steps, 5 crops of
321 per forward and 2 forwards per step, random scales 0.5-1.5 and flips, 20k steps. The train state
is saved every --seg_save_iters steps: re-running the command resumes. Every --seg_log_iters steps a
log line (losses, time per step, images per second, ETA) and TensorBoard scalars (<work_space>/tb/).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from wavecam.data.datasets import prepare_gt, split_ids
from wavecam.data.seg_train import SegTrainDataset
from wavecam.engine.provenance import folder_identity, record_file
from wavecam.engine.runtime import (
    amp_dtype,
    autocast,
    loss_scaler,
    place,
    set_cudnn,
    to_device,
    unwrap,
    wrap_ddp,
)
from wavecam.engine.sampling import batch_plan, train_loader
from wavecam.engine.state import TrainState
from wavecam.engine.trainer import Trainer
from wavecam.models.deeplab import build_seg_network, load_pretrained, msc_loss, param_groups
from wavecam.multi_stage.pass_io import data_identity, ids_identity, loader_options, make_source, pick, weights_identity
from wavecam.multi_stage.training import claim_training
from wavecam.multi_stage.workspace import resume_path, seg_labels, tensorboard_dir

log = logging.getLogger("wavecam")


def poly_every(max_iters: int, power: float, every: int, warmup: int = 0):
    """deeplab-pytorch's PolynomialLR as a factor of step t (0-based): (1 - t' / max_iters) ** power,
    t' being t rounded down to a multiple of `every` (its rate changes every LR_DECAY steps); with
    `warmup` > 0 the factor is also scaled by (t + 1) / warmup over the first `warmup` steps (the
    reference has none; torchvision's segmentation reference offers the same linear ramp)."""
    def factor(t: int) -> float:
        ramp = min(1.0, (t + 1) / warmup) if warmup > 0 else 1.0
        return ramp * (1 - every * (t // every) / max_iters) ** power
    return factor


def run(args) -> None:
    source = make_source(args)
    ids = split_ids(source, args.seg_train_list)
    labels = seg_labels(args)
    maker = {"pass": "train_seg", **data_identity(args), "train_ids": ids_identity(ids),
             "labels": "gt" if labels is None else folder_identity(labels),
             "seg_pretrained": weights_identity(args.seg_pretrained),
             **pick(args, "seg_network", "seg_n_blocks", "seg_block", "seg_msc_scales", "seg_batch_size",
                    "seg_iter_size", "seg_crop_size", "seg_scales", "seg_num_iters", "seg_learning_rate",
                    "seg_momentum", "seg_weight_decay", "seg_poly_power", "seg_lr_decay", "seg_warmup_iters",
                    "seed", "amp")}
    ctx = claim_training(args, "train_seg", [args.seg_weights_name], maker)
    if ctx is None:
        return
    if labels is None:
        prepare_gt(source, ids)
    net = build_seg_network(args.seg_network, source.num_classes + 1, scales=args.seg_msc_scales,
                            n_blocks=args.seg_n_blocks, block=args.seg_block)
    load_pretrained(net, args.seg_pretrained)
    dataset = SegTrainDataset(source, ids, labels, crop_size=args.seg_crop_size, scales=args.seg_scales,
                              hflip=True, preprocess=net.input_norm)
    plan = batch_plan(args.seg_batch_size * args.seg_iter_size, ctx.world_size, micro_batch=args.seg_batch_size)
    opt = torch.optim.SGD(param_groups(net, args.seg_learning_rate, args.seg_weight_decay),
                          lr=args.seg_learning_rate, momentum=args.seg_momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_every(args.seg_num_iters, args.seg_poly_power,
                                                              args.seg_lr_decay, args.seg_warmup_iters))
    model = wrap_ddp(place(net, ctx, args.channels_last), ctx)
    set_cudnn(args.cudnn_benchmark, args.deterministic)  # fixed crops: cuDNN may time its algorithms once
    scaler = loss_scaler(ctx.device, amp_dtype(args.amp, ctx.device))

    state = TrainState(resume_path(args.work_space, "train_seg"), {k: str(v) for k, v in {
        "network": args.seg_network, "blocks": args.seg_n_blocks, "block": args.seg_block, "train_ids": len(ids),
        "labels": labels, "batch": plan.global_batch, "iters": args.seg_num_iters, "lr": args.seg_learning_rate,
        "warmup": args.seg_warmup_iters, "crop": args.seg_crop_size, "seed": args.seed,
        "world": ctx.world_size}.items()},
        name="train_seg", restart_hint="pass --force True to start over")
    trainer = Trainer("train_seg", ctx, model, opt, sched, scaler, state, stop=args.seg_num_iters, plan=plan,
                      seed=args.seed, log_iters=args.seg_log_iters, save_iters=args.seg_save_iters,
                      tb_dir=tensorboard_dir(args.work_space, "train_seg"))
    start = trainer.open(fresh=args.force or not args.resume)
    loader: DataLoader = train_loader(dataset, plan, ctx.rank, args.seed, start, args.seg_num_iters, "step",
                                      **loader_options(args, ctx))
    log.info("train_seg: %s on %d %s images, %s; %d steps from %d", args.seg_network, len(ids),
             "ground-truth" if labels is None else f"pseudo-labelled ({labels})", plan.describe(),
             args.seg_num_iters, start)

    def loss_of(batch: dict, t: int, k: int) -> dict[str, torch.Tensor]:
        with autocast(args.amp, ctx.device):
            logits = model(to_device(batch["img"], ctx, args.channels_last))
        return {"loss": msc_loss([x.float() for x in logits], batch["label"].to(ctx.device, non_blocking=True))}

    trainer.fit(loader, loss_of)
    trainer.finish({args.seg_weights_name: unwrap(model).state_dict()},
                   after_saving=lambda: record_file(args.seg_weights_name, maker))
