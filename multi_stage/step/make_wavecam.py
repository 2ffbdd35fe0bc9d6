"""make_wavecam: CAMs of the network fine-tuned by train_wavecam (its last epoch), into
cam_mask/<id>.npz. The 1x1 kernel is --wavecam_kernel's: the predictor's weight times the
fine-tuned classifier's (`product`, ReCAM's VOC make_recam) or that classifier alone
(`classifier`, ReCAM's COCO make_recam, which never loads the predictor)."""

from __future__ import annotations

import os

import torch

from wavecam.models import CAMNet, ClassPredictor
from wavecam.models.cam import cam_weight, load_cam_weights
from wavecam.models.checkpoints import load_weights

from step.common import make_source
from step.make_cam import write_cams


def checkpoint_paths(args, epoch: int | None = None) -> tuple[str, str]:
    ep = epoch or args.wavecam_num_epoches
    return (os.path.join(args.wavecam_weight_dir, f"res50_wavecam_{ep}.pth"),
            os.path.join(args.wavecam_weight_dir, f"wavecam_predictor_{ep}.pth"))


def cam_kernel(args, model: CAMNet, predictor_path: str) -> torch.Tensor:
    """The (C, D, 1, 1) kernel of --wavecam_kernel for the fine-tuned `model`."""
    if args.wavecam_kernel == "classifier":
        return cam_weight(model.classifier.weight)
    predictor = ClassPredictor(model.classifier.out_channels, model.classifier.in_channels)
    # The predictor file also holds the wave module; only its classifier shapes the CAM.
    load_weights(predictor, predictor_path, key_map=lambda k: k if k.startswith("classifier.") else None)
    return cam_weight(model.classifier.weight, predictor.classifier.weight)


def run(args) -> None:
    source = make_source(args)
    net_path, predictor_path = checkpoint_paths(args)
    model = CAMNet(source.num_classes, pretrained=None, arch=args.cam_network)
    load_cam_weights(model, net_path, cam_only=True)
    write_cams(args, model, cam_kernel(args, model, predictor_path), "make_wavecam")
