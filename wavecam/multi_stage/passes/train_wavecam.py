"""train_wavecam: fine-tune the CAM net with the wave module and the class predictor (the wavecam_*
flags, into wavecam_weight/); --wavecam_wave False leaves the wave module out. The computation,
shared with train_recam, is wavecam.multi_stage.fine_tune's."""

from __future__ import annotations

from wavecam.multi_stage.fine_tune import WAVECAM, train


def run(args) -> None:
    train(args, WAVECAM)
