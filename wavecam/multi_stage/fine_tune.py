"""Fine-tuning the CAM net with a class predictor, and the CAM kernel it leaves: the computation
of train_recam / make_recam and train_wavecam / make_wavecam, parameterised by a `Method`.

ReCAM and WaveCAM differ in one module. Both fine-tune the CAM net on
    multi-label soft margin + <name>_loss_weight * cross-entropy of the class representations,
where a present class's representation is its CAM-weighted mean feature (ReCAM's
`Net_CAM_Feature`); WaveCAM adds the wave module's output to it, unless --wavecam_wave False.
Backbone and classifier learn at 0.1x the rate, predictor and wave module at 1x. A method names
its flags (`<name>_num_epoches`, `_learning_rate`, `_loss_weight`, `_batch_size`, `_weight_dir`,
`_kernel`) and its files, as ReCAM's code and the paper's name them: every epoch writes
`<name>_weight/res50_<name>_{ep}.pth` (backbone + classifier, CAM-net layout) and
`<name>_predictor_{ep}.pth` (ReCAM's `Class_Predictor` layout, `classifier.weight` (C, D, 1, 1),
plus `wave.*` when the wave module is built).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wavecam.data.datasets import ClassificationDataset, split_ids
from wavecam.engine.provenance import file_identity, record_file
from wavecam.engine.runtime import autocast, place, to_device, unwrap, wrap_ddp
from wavecam.engine.sampling import batch_plan, epoch_steps
from wavecam.io import save_checkpoint
from wavecam.models import CAMNet, ClassPredictor, WaveCAMNet
from wavecam.models.cam import cam_weight, load_cam_weights
from wavecam.models.checkpoints import load_weights
from wavecam.multi_stage.flags import FineTune
from wavecam.multi_stage.pass_io import data_identity, ids_identity, make_source, pick, weights_identity
from wavecam.multi_stage.training import claim_training, train_epochs
from wavecam.multi_stage.workspace import fine_tune_checkpoints
from wavecam.optim import poly_sgd

log = logging.getLogger("wavecam")


@dataclass(frozen=True)
class Method:
    """ReCAM or WaveCAM: the prefix of its files, and the key of its settings in `args.fine_tune`."""

    name: str  # "recam" or "wavecam"

    def settings(self, args) -> FineTune:
        """Its flags' values, read once by flags.finalize (whether it builds the wave module included)."""
        return args.fine_tune[self.name]


RECAM = Method("recam")
WAVECAM = Method("wavecam")


class NetWithPredictor(nn.Module):
    """Net and predictor in one module so DDP synchronises both."""

    def __init__(self, net: WaveCAMNet, predictor: ClassPredictor):
        super().__init__()
        self.net, self.predictor = net, predictor

    def forward(self, img, label):
        logits, fused = self.net(img)
        loss_ce, acc = self.predictor(fused.float(), label)
        return logits, loss_ce, acc


def split_state(net: WaveCAMNet, predictor: ClassPredictor) -> tuple[dict, dict]:
    """(CAM-net state, predictor state): the wave module travels with the predictor, as in the paper's code."""
    sd = net.state_dict()
    cam = {k: v for k, v in sd.items() if not k.startswith("wave.")}
    pred = {**predictor.state_dict(), **{k: v for k, v in sd.items() if k.startswith("wave.")}}
    return cam, pred


def train(args, method: Method) -> None:
    name = f"train_{method.name}"
    source = make_source(args)
    ids = split_ids(source, args.train_list)
    tuning = method.settings(args)
    outputs = list(fine_tune_checkpoints(args, method.name))
    maker = {"pass": name, **data_identity(args), "train_ids": ids_identity(ids),
             "cam_weights": file_identity(args.cam_weights_name), "pretrained": weights_identity(args.pretrained),
             **pick(args, "cam_network", "cam_crop_size", "cam_resize_long", "cam_weight_decay", "sgd_momentum",
                    "seed", "amp"),
             "batch_size": tuning.batch_size, "num_epoches": tuning.num_epoches,
             "learning_rate": tuning.learning_rate, "loss_weight": tuning.loss_weight, "wave": tuning.wave}
    ctx = claim_training(args, name, outputs, maker)
    if ctx is None:
        return
    dataset = ClassificationDataset(source, ids, crop_size=args.cam_crop_size,
                                    resize_long=tuple(args.cam_resize_long), hflip=True)
    batch, epochs = tuning.batch_size, tuning.num_epoches
    lr, loss_weight, wave = tuning.learning_rate, tuning.loss_weight, tuning.wave
    plan = batch_plan(batch, ctx.world_size)

    # As in train_cam: statistics learned from scratch keep being learned, ImageNet ones stay frozen.
    net = WaveCAMNet(source.num_classes, arch=args.cam_network, freeze_bn=args.pretrained is not None, wave=wave)
    load_cam_weights(net, args.cam_weights_name, cam_only=True)
    predictor = ClassPredictor(source.num_classes, net.classifier.in_channels)
    base, wave_params = net.param_groups()
    opt, sched = poly_sgd(
        [{"params": base, "lr": 0.1 * lr}, {"params": [*wave_params, *predictor.parameters()], "lr": lr}],
        lr, args.cam_weight_decay, epoch_steps(len(dataset), plan) * epochs, momentum=args.sgd_momentum,
    )
    model = wrap_ddp(place(NetWithPredictor(net, predictor), ctx, args.channels_last), ctx)

    def step(batch: dict, t: int, k: int) -> dict:
        label = batch["label"].to(ctx.device, non_blocking=True)
        with autocast(args.amp, ctx.device):
            logits, loss_ce, acc = model(to_device(batch["img"], ctx, args.channels_last), label)
        loss_cls = F.multilabel_soft_margin_loss(logits.float(), label)
        return {"loss": loss_cls + loss_weight * loss_ce, "loss_cls": loss_cls, "loss_ce": loss_ce, "acc": acc}

    def end_of_epoch(ep: int) -> None:
        # Every epoch's weights, as the reference writes them (the make pass reads the last).
        if ctx.is_main:
            trainee = unwrap(model)
            cam_sd, pred_sd = split_state(trainee.net, trainee.predictor)
            net_path, pred_path = fine_tune_checkpoints(args, method.name, ep)
            save_checkpoint(pred_path, pred_sd)
            save_checkpoint(net_path, cam_sd)

    trainer = train_epochs(name, args, ctx, dataset, plan, epochs, model, opt, sched, step, {
        "train_ids": len(ids), "batch": batch, "epochs": epochs, "lr": lr, "loss_weight": loss_weight,
        "crop": args.cam_crop_size, "seed": args.seed, "world": ctx.world_size, "wave": wave}, end_of_epoch)
    trainer.finish(after_saving=lambda: record_file(outputs[0], maker))  # every epoch wrote its weights


def cam_kernel(args, method: Method, model: CAMNet, predictor_path: str) -> torch.Tensor:
    """The (C, D, 1, 1) kernel of --<name>_kernel for the fine-tuned `model`: the predictor's weight
    times the classifier's (`product`, ReCAM's VOC make_recam) or the classifier's alone
    (`classifier`, its COCO make_recam, which never loads the predictor)."""
    if method.settings(args).kernel == "classifier":
        return cam_weight(model.classifier.weight)
    predictor = ClassPredictor(model.classifier.out_channels, model.classifier.in_channels)
    # A WaveCAM predictor file also holds the wave module; only its classifier shapes the CAM.
    load_weights(predictor, predictor_path, key_map=lambda k: k if k.startswith("classifier.") else None)
    return cam_weight(model.classifier.weight, predictor.classifier.weight)


def fine_tuned_cam(args, method: Method) -> tuple[CAMNet, torch.Tensor, dict]:
    """The network of the method's last epoch (ours, or ReCAM's own `res50_recam_*.pth` with its
    aliases), its CAM kernel and the identity of the files they come from, for cams.write_cams."""
    source = make_source(args)
    net_path, predictor_path = fine_tune_checkpoints(args, method.name)
    model = CAMNet(source.num_classes, arch=args.cam_network)
    load_cam_weights(model, net_path, cam_only=True)
    kernel = method.settings(args).kernel
    weights = {"weights": file_identity(net_path), "kernel": kernel,
               "predictor": file_identity(predictor_path) if kernel == "product" else None}
    return model, cam_kernel(args, method, model, predictor_path), weights
