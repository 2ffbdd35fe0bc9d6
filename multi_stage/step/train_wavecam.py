"""train_wavecam: fine-tune the CAM net with the wave module and the class predictor.

Loss = multi-label soft margin + wavecam_loss_weight * cross-entropy of the fused class
representations; backbone and classifier at 0.1x the rate, predictor and wave module at 1x.
Each epoch writes `res50_wavecam_{ep}.pth` (backbone + classifier, CAM-net layout) and
`wavecam_predictor_{ep}.pth` (`classifier.*` and `wave.*`, the paper code's predictor layout).
"""

from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import nn

from wavecam import dist
from wavecam.data.datasets import ClassificationDataset
from wavecam.io import is_complete, save_checkpoint
from wavecam.models import ClassPredictor, WaveCAMNet
from wavecam.models.cam import load_cam_weights
from wavecam.optim import loss_scaler, poly_sgd

from step.common import (
    amp_dtype,
    autocast,
    make_source,
    resolve_list,
    seed_everything,
    to_device,
    train_loader,
    unwrap,
    wrap_ddp,
)
from step.make_wavecam import checkpoint_paths
from step.training import ResumeState, fit

log = logging.getLogger("wavecam")


class _Trainee(nn.Module):
    """Net and predictor in one module so DDP synchronises both."""

    def __init__(self, net: WaveCAMNet, predictor: ClassPredictor):
        super().__init__()
        self.net, self.predictor = net, predictor

    def forward(self, img, label):
        logits, fused = self.net(img)
        loss_ce, acc = self.predictor(fused.float(), label)
        return logits, loss_ce, acc


def split_state(net: WaveCAMNet, predictor: ClassPredictor) -> tuple[dict, dict]:
    sd = net.state_dict()
    cam = {k: v for k, v in sd.items() if not k.startswith("wave.")}
    pred = {**predictor.state_dict(), **{k: v for k, v in sd.items() if k.startswith("wave.")}}
    return cam, pred


def run(args) -> None:
    ctx = dist.init(args.device)
    if all(is_complete(p) for p in checkpoint_paths(args)) and not args.force:
        log.info("%s exists: skipping train_wavecam (--force True to retrain)", checkpoint_paths(args)[0])
        return
    seed_everything(args.seed, ctx.rank)
    source = make_source(args)
    ids = resolve_list(source, args.train_list)
    dataset = ClassificationDataset(source, ids, crop_size=args.cam_crop_size,
                                    resize_long=tuple(args.cam_resize_long), hflip=True)
    loader = train_loader(dataset, args.wavecam_batch_size, args, ctx)

    # As in train_cam: statistics learned from scratch keep being learned, ImageNet ones stay frozen.
    net = WaveCAMNet(source.num_classes, pretrained=None, arch=args.cam_network, freeze_bn=args.pretrained is not None)
    load_cam_weights(net, args.cam_weights_name, cam_only=True)
    predictor = ClassPredictor(source.num_classes, net.classifier.in_channels)
    base, wave = net.param_groups()
    lr = args.wavecam_learning_rate
    opt, sched = poly_sgd(
        [{"params": base, "lr": 0.1 * lr}, {"params": [*wave, *predictor.parameters()], "lr": lr}],
        lr, args.cam_weight_decay, len(loader) * args.wavecam_num_epoches, momentum=args.sgd_momentum,
    )
    model = wrap_ddp(_Trainee(net, predictor), args, ctx)

    def step(pack: dict) -> dict:
        label = pack["label"].to(ctx.device, non_blocking=True)
        with autocast(args, ctx.device):
            logits, loss_ce, acc = model(to_device(pack["img"], args, ctx), label)
        loss_cls = F.multilabel_soft_margin_loss(logits.float(), label)
        return {"loss": loss_cls + args.wavecam_loss_weight * loss_ce, "loss_cls": loss_cls, "loss_ce": loss_ce,
                "acc": acc}

    def end_of_epoch(ep: int) -> None:
        # Every epoch's weights, as the reference writes them (make_wavecam reads the last).
        if ctx.is_main:
            trainee = unwrap(model)
            cam_sd, pred_sd = split_state(trainee.net, trainee.predictor)
            net_path, pred_path = checkpoint_paths(args, ep)
            save_checkpoint(pred_path, pred_sd)
            save_checkpoint(net_path, cam_sd)

    state = ResumeState(args, "train_wavecam", {
        "train_ids": len(ids), "batch": args.wavecam_batch_size, "epochs": args.wavecam_num_epoches,
        "lr": lr, "loss_weight": args.wavecam_loss_weight, "crop": args.cam_crop_size, "seed": args.seed,
        "world": ctx.world_size})
    fit("train_wavecam", model, opt, sched, loader, args.wavecam_num_epoches, step, state, ctx, args.seed,
        end_of_epoch, loss_scaler(ctx.device, amp_dtype(args, ctx.device)))
    if ctx.is_main:
        state.finish()
    dist.barrier(ctx)
