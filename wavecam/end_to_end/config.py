"""The end-to-end config: the YAML file with `--set section.key=value` overrides, checked for missing
keys before a run starts, and the command-line arguments the front doors share."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from wavecam.io import WavecamError


def front_door_parser(description: str, work_dir_help: str, set_example: str) -> argparse.ArgumentParser:
    """The arguments train.py, test.py and evaluate.py share: --config, --work_dir, --device, --set."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="the YAML config, e.g. end_to_end/configs/voc.yaml")
    p.add_argument("--work_dir", default=None, help=work_dir_help)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun: the rank's GPU)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"override config values, e.g. --set {set_example}")
    return p


def config_from_args(args: argparse.Namespace) -> dict:
    """The config with the command line's --set overrides and --work_dir applied."""
    cfg = load_config(args.config, args.overrides)
    if args.work_dir:
        cfg["work_dir"] = args.work_dir
    return cfg


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """The YAML file at `path` with `section.key=value` overrides applied (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise WavecamError(f"config not found: {path}; see end_to_end/configs/ for the shipped ones")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise WavecamError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise WavecamError(f"{path}: expected a mapping of sections, got {type(cfg).__name__}")
    for item in overrides:
        set_key(cfg, item)
    check_config(cfg, path)
    return cfg


REQUIRED = {
    "dataset": ("name", "root", "train_split", "crop_size", "scale_range", "resample", "pad"),
    "model": ("backbone", "pretrained", "stride", "embedding_dim", "pooling", "drop_path_rate"),
    "train": ("seed", "batch_size", "micro_batch", "max_iters", "cam_iters", "prop_label_iters",
              "aff_from_seg_target", "eval_iters", "log_iters", "tb_image_every", "num_workers", "amp",
              "deterministic"),
    "cam": ("scales", "bkg_score", "high_thre", "low_thre", "radius", "decoder_statistics"),
    "par": ("num_iter", "dilations"),
    "loss": ("seg_weight", "aff_weight"),
    "wavecam": ("loss_weight", "start_iter", "cams_iter"),
    "optimizer": ("learning_rate", "betas", "weight_decay"),
    "scheduler": ("warmup_iter", "warmup_ratio", "power"),
    "val": ("split",),
    "test": ("after_training", "eval_set", "scales", "flip", "resize_long", "crf", "crf_workers", "evaluate"),
}


def check_config(cfg: dict, path: Path) -> None:
    """One message listing every missing key, rather than a KeyError hours into a run."""
    if isinstance(cfg.get("train"), dict) and "samples_per_gpu" in cfg["train"]:
        raise WavecamError(f"{path}: train.samples_per_gpu is gone: set train.batch_size (the global batch, "
                           "over all processes) and train.micro_batch (images per forward pass of one process); "
                           "see end_to_end/configs/voc.yaml")
    missing = [] if "work_dir" in cfg else ["work_dir"]
    for section, keys in REQUIRED.items():
        given = cfg.get(section)
        missing += [f"{section}.{k}" for k in keys if not isinstance(given, dict) or k not in given]
    if missing:
        raise WavecamError(f"{path}: missing config key(s) {', '.join(missing)}; "
                           "compare with end_to_end/configs/voc.yaml")


def set_key(cfg: dict, item: str) -> None:
    """Apply one `a.b.c=value` override in place. Only existing keys may be set: a typo must not
    silently train with the default."""
    key, sep, value = item.partition("=")
    if not sep:
        raise WavecamError(f"--set {item!r}: expected section.key=value")
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node.get(name) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        raise WavecamError(f"--set {item!r}: the config has no key {key!r}")
    node[leaf] = yaml.safe_load(value)


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed
