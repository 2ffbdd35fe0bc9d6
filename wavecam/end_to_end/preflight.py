"""What a run needs from the disk, checked before it writes anything: the dataset root, the pretrained
weights and the checkpoints it reads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from wavecam.end_to_end.config import Config
from wavecam.errors import WavecamError
from wavecam.models.e2e import MIT_WEIGHTS


def check_dataset_root(cfg: Config) -> None:
    root = cfg.dataset.root
    if not Path(root).is_dir():
        raise WavecamError(f"dataset.root {root}: folder not found (from {os.getcwd()}); set it in the config or "
                           "with --set dataset.root=PATH (the README's 'Datasets' shows the layouts)")


def check_pretrained(cfg: Config) -> None:
    """model.pretrained must be a file (or null); the message says where NVlabs' weights come from."""
    path, backbone = cfg.model.pretrained, cfg.model.backbone
    if path is not None and not Path(path).is_file():
        raise WavecamError(f"model.pretrained {path}: file not found (from {os.getcwd()}). {MIT_WEIGHTS}. "
                           f"Put {backbone}.pth at {os.path.abspath(path)}, or point --set model.pretrained=PATH "
                           "at it (a SegFormer checkpoint of mmseg's layout works too); null trains from random "
                           "initialisation.")


def preflight(cfg: Config, checkpoints: Sequence[str | os.PathLike] = ()) -> None:
    """What a run needs from the disk, checked before it writes anything (the log included) or indexes
    any data: the dataset root, the pretrained weights and the given checkpoints. A wrong path then
    costs seconds, not a COCO mask rendering, and leaves no empty log behind."""
    check_dataset_root(cfg)
    check_pretrained(cfg)
    for path in checkpoints:
        if not Path(path).is_file():
            raise WavecamError(f"checkpoint not found: {path} (from {os.getcwd()})")
