"""make_recam: CAMs of the network fine-tuned by train_recam (its last epoch, ours or ReCAM's own
`res50_recam_*.pth` / `recam_predictor_*.pth`), into cam_mask/<id>.npz, with the 1x1 kernel of
--recam_kernel: predictor ⊙ classifier on VOC, the classifier alone on COCO, as ReCAM's two
make_recam.py (wavecam.multi_stage.fine_tune.cam_kernel)."""

from __future__ import annotations

from wavecam.multi_stage.cams import write_cams
from wavecam.multi_stage.fine_tune import RECAM, fine_tuned_cam


def run(args) -> None:
    model, kernel, weights = fine_tuned_cam(args, RECAM)
    write_cams(args, model, kernel, "make_recam", weights)
