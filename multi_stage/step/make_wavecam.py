"""make_wavecam: CAMs whose kernel is the WaveCAM predictor's weight times the classifier's,
from the last train_wavecam epoch, into cam_mask/<id>.npz."""

from __future__ import annotations

import os

from wavecam.models import CAMNet, ClassPredictor
from wavecam.models.cam import cam_weight, load_cam_weights
from wavecam.models.checkpoints import load_weights

from step.common import make_source
from step.make_cam import write_cams


def checkpoint_paths(args, epoch: int | None = None) -> tuple[str, str]:
    ep = epoch or args.wavecam_num_epoches
    return (os.path.join(args.wavecam_weight_dir, f"res50_wavecam_{ep}.pth"),
            os.path.join(args.wavecam_weight_dir, f"wavecam_predictor_{ep}.pth"))


def run(args) -> None:
    source = make_source(args)
    net_path, predictor_path = checkpoint_paths(args)
    model = CAMNet(source.num_classes, pretrained=None, arch=args.cam_network)
    load_cam_weights(model, net_path, cam_only=True)
    predictor = ClassPredictor(source.num_classes, model.classifier.in_channels)
    # The predictor file also holds the wave module; only its classifier shapes the CAM.
    load_weights(predictor, predictor_path, key_map=lambda k: k if k.startswith("classifier.") else None)
    write_cams(args, model, cam_weight(model.classifier.weight, predictor.classifier.weight), "make_wavecam")
