"""The end-to-end config: an OmegaConf structured config, one dataclass per section of
end_to_end/configs/*.yaml, and the command-line arguments the front doors share.

The YAML file and then each `--set section.key=value` (the value parsed as YAML) are merged into the
schema, so a key the schema does not have and a value of the wrong type are refused, with one
`WavecamError` naming the file or the override and the key: a typo must not silently train with the
default. Keys without a default must be given; the missing ones are listed in one message, rather
than met one by one as a KeyError hours into a run. The jobs get a `Config` of plain dataclasses and
Python lists; `<work_dir>/config.yaml` and checkpoints hold it as a plain dict (`as_dict`), which
`torch.load(weights_only=True)` reads and `load_config` reads back.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from wavecam.io import WavecamError

REFERENCE = "end_to_end/configs/voc.yaml"


@dataclass
class DatasetConfig:
    name: str = MISSING  # voc or coco
    root: str = MISSING
    cache_dir: str | None = None  # derived labels and masks; None: ~/.cache/wavecam or $WAVECAM_CACHE
    train_split: str = MISSING
    # COCO only. AFA's lists (datasets/coco/{train,val}.txt, 82,081 and 40,137 images) leave out the
    # images without annotations, hence `annotated`; crowds are `ignore`d, as this trainer always had it.
    coco_split_images: str = "annotated"
    coco_crowd: str = "ignore"
    crop_size: int = MISSING
    scale_range: list[float] | None = MISSING  # random rescale before the crop; null: none
    resample: str = MISSING  # pil_bilinear or cv2_bicubic
    pad: str = MISSING  # black or mean


@dataclass
class ModelConfig:
    backbone: str = MISSING
    pretrained: str | None = MISSING  # null: random initialisation
    stride: list[int] = MISSING
    embedding_dim: int = MISSING
    pooling: str = MISSING
    drop_path_rate: float = MISSING


@dataclass
class TrainConfig:
    seed: int = MISSING
    batch_size: int = MISSING  # global, over all processes
    micro_batch: int = MISSING  # images per forward pass of one process at most
    max_iters: int = MISSING
    cam_iters: int = MISSING
    prop_label_iters: int = MISSING
    aff_from_seg_target: bool = MISSING
    eval_iters: int = MISSING
    log_iters: int = MISSING
    tb_image_every: int = MISSING
    num_workers: int = MISSING
    amp: bool = MISSING
    deterministic: bool = MISSING


@dataclass
class CamConfig:
    scales: list[float] = MISSING
    bkg_score: float = MISSING
    high_thre: float = MISSING
    low_thre: float = MISSING
    radius: int = MISSING
    decoder_statistics: bool = MISSING


@dataclass
class ParConfig:
    num_iter: int = MISSING
    dilations: list[int] = MISSING


@dataclass
class LossConfig:
    seg_weight: float = MISSING
    aff_weight: float = MISSING


@dataclass
class WavecamConfig:
    loss_weight: float = MISSING
    start_iter: int = MISSING
    cams_iter: int = MISSING


@dataclass
class OptimizerConfig:
    learning_rate: float = MISSING
    betas: list[float] = MISSING
    weight_decay: float = MISSING


@dataclass
class SchedulerConfig:
    warmup_iter: int = MISSING
    warmup_ratio: float = MISSING
    power: float = MISSING


@dataclass
class ValConfig:
    split: str = MISSING


@dataclass
class TestConfig:
    after_training: bool = MISSING
    eval_set: str = MISSING
    scales: list[float] = MISSING
    flip: bool = MISSING
    resize_long: int | None = MISSING
    crf: bool = MISSING
    crf_workers: int = MISSING
    evaluate: bool = MISSING


@dataclass
class Config:
    """A run's settings; the comments of end_to_end/configs/voc.yaml say what each key does."""

    work_dir: str = MISSING
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    par: ParConfig = field(default_factory=ParConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    wavecam: WavecamConfig = field(default_factory=WavecamConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    val: ValConfig = field(default_factory=ValConfig)
    test: TestConfig = field(default_factory=TestConfig)


def front_door_parser(description: str, work_dir_help: str, set_example: str) -> argparse.ArgumentParser:
    """The arguments train.py, test.py and evaluate.py share: --config, --work_dir, --device, --set."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="the YAML config, e.g. end_to_end/configs/voc.yaml")
    p.add_argument("--work_dir", default=None, help=work_dir_help)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun: the rank's GPU)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"override config values, e.g. --set {set_example}")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """The config with the command line's --set overrides and --work_dir applied."""
    cfg = load_config(args.config, args.overrides)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    return cfg


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """The YAML file at `path` merged into the schema, with `section.key=value` overrides applied
    (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise WavecamError(f"config not found: {path}; see end_to_end/configs/ for the shipped ones")
    try:
        given = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise WavecamError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(given, dict):
        raise WavecamError(f"{path}: expected a mapping of sections, got {type(given).__name__}")
    if isinstance(given.get("train"), dict) and "samples_per_gpu" in given["train"]:
        raise WavecamError(f"{path}: train.samples_per_gpu is gone: set train.batch_size (the global batch, "
                           "over all processes) and train.micro_batch (images per forward pass of one process); "
                           f"see {REFERENCE}")
    cfg = merged(OmegaConf.structured(Config), given, str(path))
    for item in overrides:
        cfg = merged(cfg, override(item), f"--set {item!r}")
    missing = missing_keys(cfg)
    if missing:
        raise WavecamError(f"{path}: missing config key(s) {', '.join(missing)}; compare with {REFERENCE}")
    return OmegaConf.to_object(cfg)


def override(item: str) -> dict:
    """One `a.b.c=value` override as the mapping {a: {b: {c: value}}}, the value parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep:
        raise WavecamError(f"--set {item!r}: expected section.key=value")
    try:
        node = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise WavecamError(f"--set {item!r}: the value is not valid YAML ({e})") from e
    for name in reversed(key.split(".")):
        node = {name: node}
    return node


def merged(cfg: DictConfig, given: dict, where: str) -> DictConfig:
    """`given` merged into `cfg`, whose schema refuses keys it does not have and values of the wrong
    type: a typo must not silently train with the default. `where` (the file, the --set) heads the error."""
    for key, value in given.items():
        if key in cfg and OmegaConf.is_dict(cfg[key]) and not isinstance(value, dict):
            raise WavecamError(f"{where}: {key} is a section of keys, not a value ({value!r}); "
                               f"compare with {REFERENCE}")
    try:
        return OmegaConf.merge(cfg, given)
    except ConfigKeyError as e:
        raise WavecamError(f"{where}: the config has no key {e.full_key!r} "
                           f"(a typo? every key is in {REFERENCE})") from e
    except OmegaConfBaseException as e:
        reason = (e.msg or str(e)).splitlines()[0]
        raise WavecamError(f"{where}: {e.full_key}: {reason}; give a value of the key's type, as in {REFERENCE}") from e


def missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """The dotted keys without a value, in the schema's order."""
    missing = []
    for key in node:
        if OmegaConf.is_missing(node, key):
            missing.append(f"{prefix}{key}")
        elif OmegaConf.is_dict(node[key]):
            missing += missing_keys(node[key], f"{prefix}{key}.")
    return missing


def as_dict(cfg: Config) -> dict:
    """The config as plain dicts and lists, what checkpoints and config.yaml hold."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def config_yaml(cfg: Config) -> str:
    """The config as YAML in the schema's order, which load_config reads back."""
    return yaml.safe_dump(as_dict(cfg), sort_keys=False)


def config_changes(old: dict, new: Config) -> list[str]:
    """Dotted keys whose values differ between a checkpoint's config and this run's. The checkpoint's
    is read with the schema's defaults first where it fits the schema, so that a key it was written
    without (dataset.coco_crowd, before the key had a default) counts as the default it meant."""
    try:
        old = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Config), old))
    except OmegaConfBaseException:
        pass  # an older layout (train.samples_per_gpu): compared as it was written
    return changed_keys(old, as_dict(new))


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed
