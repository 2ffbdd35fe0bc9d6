"""train_recam: ReCAM's fine-tuning (its step/train_recam.py): the CAM net and a class predictor
trained on the CAM-weighted class features, with the recam_* flags, into recam_weight/. It is
train_wavecam without the wave module (wavecam.multi_stage.fine_tune)."""

from __future__ import annotations

from wavecam.multi_stage.fine_tune import RECAM, train


def run(args) -> None:
    train(args, RECAM)
