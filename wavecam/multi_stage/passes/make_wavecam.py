"""make_wavecam: CAMs of the network fine-tuned by train_wavecam (its last epoch), into
cam_mask/<id>.npz, with the 1x1 kernel of --wavecam_kernel (wavecam.multi_stage.fine_tune.cam_kernel)."""

from __future__ import annotations

from wavecam.multi_stage.cams import write_cams
from wavecam.multi_stage.fine_tune import WAVECAM, fine_tuned_cam


def run(args) -> None:
    model, kernel, weights = fine_tuned_cam(args, WAVECAM)
    write_cams(args, model, kernel, "make_wavecam", weights)
