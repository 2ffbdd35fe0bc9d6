"""train_cam: the ResNet-50 CAM classifier (multi-label soft margin), written to res50_cam.pth."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from wavecam.data.datasets import ClassificationDataset, split_ids
from wavecam.engine.provenance import record_file
from wavecam.engine.runtime import autocast, place, shard, to_device, unwrap, wrap_ddp
from wavecam.engine.sampling import batch_plan, epoch_steps
from wavecam.models import CAMNet
from wavecam.models.resnet import load_pretrained
from wavecam.multi_stage.pass_io import data_identity, ids_identity, loader_options, make_source, pick, weights_identity
from wavecam.multi_stage.training import claim_training, train_epochs
from wavecam.optim import poly_sgd

log = logging.getLogger("wavecam")


def validate(model, loader, args, ctx) -> float:
    """Mean multi-label soft-margin loss over the validation list (rank-local)."""
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            logits = model(to_device(batch["img"], ctx, args.channels_last))
            total += F.multilabel_soft_margin_loss(logits, batch["label"].to(ctx.device), reduction="sum").item()
            n += logits.shape[0]
    return total / max(n, 1)


def run(args) -> None:
    source = make_source(args)
    train_ids = split_ids(source, args.train_list)
    maker = {"pass": "train_cam", **data_identity(args), "train_ids": ids_identity(train_ids),
             "pretrained": weights_identity(args.pretrained),
             **pick(args, "cam_network", "cam_crop_size", "cam_resize_long", "cam_batch_size", "cam_num_epoches",
                    "cam_learning_rate", "cam_weight_decay", "sgd_momentum", "seed", "amp")}
    ctx = claim_training(args, "train_cam", [args.cam_weights_name], maker)
    if ctx is None:
        return
    train_set = ClassificationDataset(source, train_ids, crop_size=args.cam_crop_size,
                                      resize_long=tuple(args.cam_resize_long), hflip=True)
    val_set = ClassificationDataset(source, shard(split_ids(source, args.val_list), ctx),
                                    crop_size=args.cam_crop_size, resize_long=None, hflip=False)
    plan = batch_plan(args.cam_batch_size, ctx.world_size)
    val_loader = DataLoader(val_set, batch_size=plan.per_process, shuffle=False,
                            **loader_options(args, ctx, reused=True))

    net = CAMNet(source.num_classes, freeze_bn=args.pretrained is not None, arch=args.cam_network)
    load_pretrained(net, args.pretrained)
    backbone, new = net.param_groups()
    opt, sched = poly_sgd(
        [{"params": backbone, "lr": args.cam_learning_rate}, {"params": new, "lr": 10 * args.cam_learning_rate}],
        args.cam_learning_rate, args.cam_weight_decay, epoch_steps(len(train_set), plan) * args.cam_num_epoches,
        momentum=args.sgd_momentum,
    )
    model = wrap_ddp(place(net, ctx, args.channels_last), ctx)

    def step(batch: dict, t: int, k: int) -> dict:
        with autocast(args.amp, ctx.device):
            logits = model(to_device(batch["img"], ctx, args.channels_last))
        return {"loss": F.multilabel_soft_margin_loss(logits.float(), batch["label"].to(ctx.device))}

    def end_of_epoch(ep: int) -> None:
        log.info("train_cam epoch %d: validation loss %.4f", ep, validate(model, val_loader, args, ctx))

    trainer = train_epochs("train_cam", args, ctx, train_set, plan, args.cam_num_epoches, model, opt, sched, step, {
        "train_ids": len(train_ids), "batch": args.cam_batch_size, "epochs": args.cam_num_epoches,
        "lr": args.cam_learning_rate, "crop": args.cam_crop_size, "seed": args.seed, "world": ctx.world_size},
        end_of_epoch)
    trainer.finish({args.cam_weights_name: unwrap(model).state_dict()},
                   after_saving=lambda: record_file(args.cam_weights_name, maker))
