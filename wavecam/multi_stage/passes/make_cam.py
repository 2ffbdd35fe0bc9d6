"""make_cam: multi-scale, flipped CAMs of the plain classifier into cam_mask/<id>.npz
(wavecam.multi_stage.cams.write_cams)."""

from __future__ import annotations

from wavecam.engine.provenance import file_identity
from wavecam.models import CAMNet
from wavecam.models.cam import cam_weight, load_cam_weights
from wavecam.multi_stage.cams import write_cams
from wavecam.multi_stage.pass_io import make_source


def run(args) -> None:
    source = make_source(args)
    model = CAMNet(source.num_classes, arch=args.cam_network)
    load_cam_weights(model, args.cam_weights_name)
    write_cams(args, model, cam_weight(model.classifier.weight), "make_cam",
               {"cam_weights": file_identity(args.cam_weights_name)})
