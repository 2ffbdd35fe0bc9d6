"""train_irn: IRN's boundary and displacement branches on a frozen ResNet-50, from ir_label/.

Pair labels come from ir_label crops at stride 4 with path radius 10; the four IRN losses are
combined as (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2. After training, the displacement
field's mean over the training images is stored in the mean-shift layer, as IRN does.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from wavecam.data.datasets import AffinityDataset, TopLeftCropDataset, split_ids
from wavecam.engine.provenance import file_identity, folder_identity, record_file
from wavecam.engine.runtime import autocast, place, to_device, unwrap, wrap_ddp
from wavecam.engine.sampling import batch_plan, epoch_steps
from wavecam.errors import WavecamError
from wavecam.labels.randomwalk import PathIndex
from wavecam.models.cam import torchvision_backbone
from wavecam.models.irn import AffinityDisplacementLoss, IRNet
from wavecam.models.resnet import load_pretrained
from wavecam.multi_stage.pass_io import data_identity, ids_identity, loader_options, make_source, pick, weights_identity
from wavecam.multi_stage.training import claim_training, train_epochs
from wavecam.optim import poly_sgd

log = logging.getLogger("wavecam")


class IRNWithLoss(torch.nn.Module):
    def __init__(self, net: IRNet, loss: AffinityDisplacementLoss):
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, img, bg_pos, fg_pos, neg):
        edge, dp = self.net(img)
        return self.loss(edge, dp, bg_pos, fg_pos, neg)


@torch.no_grad()
def displacement_mean(net: IRNet, source, ids, args, ctx) -> torch.Tensor:
    loader = DataLoader(TopLeftCropDataset(source, ids, args.irn_crop_size), batch_size=args.irn_batch_size,
                        **loader_options(args, ctx))
    net.eval()
    means = [net(to_device(batch["img"], ctx, args.channels_last))[1].mean(dim=(0, 2, 3)).cpu() for batch in loader]
    return torch.stack(means).mean(dim=0)


def backbone_weights(args):
    """ImageNet (or --pretrained's file) as in IRN; without them, the trained CAM backbone: a
    frozen randomly initialised ResNet would give the boundary branch nothing to learn from."""
    if args.pretrained is not None:
        return args.pretrained
    if args.irn_network != args.cam_network:
        raise WavecamError(f"--pretrained none takes IRN's backbone from the CAM network, but --irn_network "
                           f"{args.irn_network} differs from --cam_network {args.cam_network}")
    log.info("--pretrained none: IRN's frozen backbone starts from %s", args.cam_weights_name)
    return torchvision_backbone(args.cam_weights_name)


def run(args) -> None:
    source = make_source(args)
    ids = split_ids(source, args.train_list)
    maker = {"pass": "train_irn", **data_identity(args), "train_ids": ids_identity(ids),
             "ir_labels": folder_identity(args.ir_label_out_dir),
             "backbone": weights_identity(args.pretrained) if args.pretrained is not None
             else file_identity(args.cam_weights_name),
             **pick(args, "irn_network", "irn_crop_size", "irn_rescale", "irn_batch_size", "irn_path_radius",
                    "irn_num_epoches", "irn_learning_rate", "irn_weight_decay", "sgd_momentum", "seed", "amp")}
    ctx = claim_training(args, "train_irn", [args.irn_weights_name], maker)
    if ctx is None:
        return
    side = args.irn_crop_size // 4  # flags.check_conflicts made sure the radius fits
    path_index = PathIndex(args.irn_path_radius, (side, side))
    dataset = AffinityDataset(source, ids, args.ir_label_out_dir, path_index, crop_size=args.irn_crop_size,
                              rescale=tuple(args.irn_rescale), hflip=True)
    plan = batch_plan(args.irn_batch_size, ctx.world_size)

    net = IRNet(arch=args.irn_network)
    load_pretrained(net, backbone_weights(args))
    edge_params, dp_params = net.trainable_parameters()
    lr = args.irn_learning_rate
    opt, sched = poly_sgd([{"params": edge_params, "lr": lr}, {"params": dp_params, "lr": 10 * lr}],
                          lr, args.irn_weight_decay, epoch_steps(len(dataset), plan) * args.irn_num_epoches,
                          momentum=args.sgd_momentum)
    trainee = IRNWithLoss(net, AffinityDisplacementLoss(path_index))
    model = wrap_ddp(place(trainee, ctx, args.channels_last), ctx)

    def step(batch: dict, t: int, k: int) -> dict:
        inputs = [to_device(batch["img"], ctx, args.channels_last),
                  *(batch[k].to(ctx.device, non_blocking=True) for k in ("bg_pos", "fg_pos", "neg"))]
        with autocast(args.amp, ctx.device):
            losses = model(*inputs)
        return {"loss": losses["total"], **{k: losses[k] for k in ("pos_aff", "neg_aff", "dp_fg", "dp_bg")}}

    trainer = train_epochs("train_irn", args, ctx, dataset, plan, args.irn_num_epoches, model, opt, sched, step, {
        "train_ids": len(ids), "batch": args.irn_batch_size, "epochs": args.irn_num_epoches, "lr": lr,
        "crop": args.irn_crop_size, "radius": args.irn_path_radius, "seed": args.seed, "world": ctx.world_size})
    net = unwrap(model).net
    if ctx.is_main:
        net.mean_shift.running_mean.copy_(displacement_mean(net, source, ids, args, ctx))
    trainer.finish({args.irn_weights_name: net.state_dict()},
                   after_saving=lambda: record_file(args.irn_weights_name, maker))
