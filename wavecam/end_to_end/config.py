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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from wavecam.engine.state import settings_changes
from wavecam.errors import WavecamError
from wavecam.ranges import Range, nonneg_float, nonneg_int, pos_float, pos_int, unit_float

REFERENCE = "end_to_end/configs/voc.yaml"
# torch's Adam refuses a beta of 1 or more: a moving average that never forgets.
ADAM_BETA = Range(float, low=0, high=1, high_open=True)


def ranged(values: Range) -> Any:
    """A key without a default whose value, or each value of a list, must lie in `values` (None, where
    the key allows it, means off): load_config refuses anything else, so that a batch of 0 or a negative
    scale stops the run before it starts, not as a traceback or a NaN loss hours in."""
    return field(default=MISSING, metadata={"range": values})


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
    crop_size: int = ranged(pos_int)
    scale_range: list[float] | None = ranged(pos_float)  # random rescale before the crop; null: none
    resample: str = MISSING  # pil_bilinear or cv2_bicubic
    pad: str = MISSING  # black or mean


@dataclass
class ModelConfig:
    backbone: str = MISSING
    pretrained: str | None = MISSING  # null: random initialisation
    stride: list[int] = ranged(pos_int)
    embedding_dim: int = ranged(pos_int)
    pooling: str = MISSING
    drop_path_rate: float = ranged(unit_float)


@dataclass
class TrainConfig:
    seed: int = MISSING
    batch_size: int = ranged(pos_int)  # global, over all processes
    micro_batch: int = ranged(pos_int)  # images per forward pass of one process at most
    max_iters: int = ranged(pos_int)
    cam_iters: int = ranged(nonneg_int)
    prop_label_iters: int = ranged(nonneg_int)
    aff_from_seg_target: bool = MISSING
    eval_iters: int = ranged(pos_int)
    log_iters: int = ranged(pos_int)
    tb_image_every: int = ranged(nonneg_int)  # 0: no image panels
    num_workers: int = ranged(nonneg_int)
    amp: bool = MISSING
    deterministic: bool = MISSING


@dataclass
class CamConfig:
    scales: list[float] = ranged(pos_float)
    bkg_score: float = ranged(unit_float)
    high_thre: float = ranged(unit_float)
    low_thre: float = ranged(unit_float)
    radius: int = ranged(pos_int)
    decoder_statistics: bool = MISSING


@dataclass
class ParConfig:
    num_iter: int = ranged(nonneg_int)
    dilations: list[int] = ranged(pos_int)


@dataclass
class LossConfig:
    seg_weight: float = ranged(nonneg_float)
    aff_weight: float = ranged(nonneg_float)


@dataclass
class WavecamConfig:
    loss_weight: float = ranged(nonneg_float)
    start_iter: int = ranged(nonneg_int)
    cams_iter: int = ranged(nonneg_int)


@dataclass
class OptimizerConfig:
    learning_rate: float = ranged(pos_float)
    betas: list[float] = ranged(ADAM_BETA)
    weight_decay: float = ranged(nonneg_float)


@dataclass
class SchedulerConfig:
    warmup_iter: int = ranged(nonneg_int)
    warmup_ratio: float = ranged(nonneg_float)
    power: float = ranged(nonneg_float)


@dataclass
class ValConfig:
    split: str = MISSING


@dataclass
class TestConfig:
    after_training: bool = MISSING
    eval_set: str = MISSING
    scales: list[float] = ranged(pos_float)
    flip: bool = MISSING
    resize_long: int | None = ranged(pos_int)
    crf: bool = MISSING
    crf_workers: int = ranged(nonneg_int)
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
        raise WavecamError(f"{path}: train.samples_per_gpu is not a key of this config: set train.batch_size "
                           "(the global batch, over all processes) and train.micro_batch (images per forward pass "
                           "of one process); "
                           f"see {REFERENCE}")
    cfg = merged(OmegaConf.structured(Config), given, str(path))
    for item in overrides:
        cfg = merged(cfg, override(item), f"--set {item!r}")
    missing = missing_keys(cfg)
    if missing:
        raise WavecamError(f"{path}: missing config key(s) {', '.join(missing)}; compare with {REFERENCE}")
    config = OmegaConf.to_object(cfg)
    for key, value, values in out_of_range(config):
        # the last --set of the key gave the value, if one did; the file otherwise
        where = next((f"--set {item!r}" for item in reversed(overrides) if item.partition("=")[0].strip() == key),
                     str(path))
        raise WavecamError(f"{where}: {key}: {value!r} is not {values}")
    return config


def out_of_range(node: Any, prefix: str = "") -> Iterator[tuple[str, Any, Range]]:
    """(dotted key, value, range) of each value outside the range its key declares (`ranged`)."""
    for f in fields(node):
        value = getattr(node, f.name)
        if is_dataclass(value):
            yield from out_of_range(value, f"{prefix}{f.name}.")
        elif "range" in f.metadata and value is not None:
            for item in value if isinstance(value, list) else [value]:
                if not f.metadata["range"].holds(item):
                    yield f"{prefix}{f.name}", item, f.metadata["range"]


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
        pass  # a layout this config cannot read (train.samples_per_gpu): compared as it was written
    return settings_changes(old, as_dict(new))

