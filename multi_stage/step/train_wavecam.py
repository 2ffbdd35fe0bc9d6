"""train_wavecam: fine-tune the CAM net with the wave module and the class predictor.

Loss = multi-label soft margin + wavecam_loss_weight * cross-entropy of the fused class
representations; backbone and classifier at 0.1x the rate, predictor and wave module at 1x.
Each epoch writes `res50_wavecam_{ep}.pth` (backbone + classifier, CAM-net layout) and
`wavecam_predictor_{ep}.pth` (`classifier.*` and `wave.*`, the paper code's predictor layout).
"""

from __future__ import annotations

import logging
import os

import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wavecam import dist
from wavecam.data.datasets import ClassificationDataset
from wavecam.io import is_complete, save_checkpoint
from wavecam.models import ClassPredictor, WaveCAMNet
from wavecam.models.cam import load_cam_weights
from wavecam.optim import poly_sgd

from step.common import (
    autocast,
    make_source,
    resolve_list,
    seed_everything,
    train_loader,
    unwrap,
    wrap_ddp,
)
from step.make_wavecam import checkpoint_paths

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
    dataset = ClassificationDataset(source, resolve_list(source, args.train_list), crop_size=args.cam_crop_size,
                                    resize_long=tuple(args.cam_resize_long), hflip=True)
    loader = train_loader(dataset, args.wavecam_batch_size, args, ctx)

    net = WaveCAMNet(source.num_classes, pretrained=None)
    load_cam_weights(net, args.cam_weights_name, cam_only=True)
    predictor = ClassPredictor(source.num_classes, args.feature_dim)
    base, wave = net.param_groups()
    lr = args.wavecam_learning_rate
    opt, sched = poly_sgd(
        [{"params": base, "lr": 0.1 * lr}, {"params": [*wave, *predictor.parameters()], "lr": lr}],
        lr, args.cam_weight_decay, len(loader) * args.wavecam_num_epoches, momentum=args.sgd_momentum,
    )
    model = wrap_ddp(_Trainee(net, predictor), ctx)
    model.train()

    for ep in range(1, args.wavecam_num_epoches + 1):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(ep)
        bar = tqdm(loader, desc=f"train_wavecam {ep}/{args.wavecam_num_epoches}", disable=not ctx.is_main)
        for pack in bar:
            img = pack["img"].to(ctx.device, non_blocking=True)
            label = pack["label"].to(ctx.device, non_blocking=True)
            with autocast(args, ctx.device):
                logits, loss_ce, acc = model(img, label)
            loss_cls = F.multilabel_soft_margin_loss(logits.float(), label)
            loss = loss_cls + args.wavecam_loss_weight * loss_ce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(cls=f"{loss_cls.item():.4f}", ce=f"{loss_ce.item():.4f}", acc=f"{acc.item():.2f}")
        log.info("train_wavecam epoch %d: loss_cls %.4f loss_ce %.4f acc %.3f", ep, loss_cls.item(),
                 loss_ce.item(), acc.item())
        if ctx.is_main:
            trainee = unwrap(model)
            cam_sd, pred_sd = split_state(trainee.net, trainee.predictor)
            net_path, pred_path = checkpoint_paths(args, ep)
            os.makedirs(args.wavecam_weight_dir, exist_ok=True)
            save_checkpoint(pred_path, pred_sd)
            save_checkpoint(net_path, cam_sd)
    dist.barrier(ctx)
