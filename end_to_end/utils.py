"""What train.py, test.py and evaluate.py share: the YAML config and the checks made before a run
writes anything, data, model and optimiser set-up, the global batch split over processes and
micro-batches, the iteration-indexed sampler that makes a resumed run see the batches of an
uninterrupted one, the metric logger, TensorBoard, validation (CAMs, propagated CAMs, segmentation)
and multi-scale flipped segmentation with its evaluation."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wavecam import dist
from wavecam import e2e_labels as lab
from wavecam.crf import crf_inference_prob
from wavecam.data.datasets import E2ETrainDataset, SegmentationDataset
from wavecam.io import WavecamError, save_json, save_png
from wavecam.metrics import ConfusionMatrix
from wavecam.models.e2e import MIT_WEIGHTS, WaveAFA, load_pretrained
from wavecam.optim import autocast_dtype

log = logging.getLogger("wavecam")


# --- config --------------------------------------------------------------------------------------

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


def check_dataset_root(cfg: dict) -> None:
    root = cfg["dataset"]["root"]
    if not Path(root).is_dir():
        raise WavecamError(f"dataset.root {root}: folder not found (from {os.getcwd()}); set it in the config or "
                           "with --set dataset.root=PATH (the README's 'Datasets' shows the layouts)")


def check_pretrained(cfg: dict) -> None:
    """model.pretrained must be a file (or null); the message says where NVlabs' weights come from."""
    path, backbone = cfg["model"]["pretrained"], cfg["model"]["backbone"]
    if path is not None and not Path(path).is_file():
        raise WavecamError(f"model.pretrained {path}: file not found (from {os.getcwd()}). {MIT_WEIGHTS}. "
                           f"Put {backbone}.pth at {os.path.abspath(path)}, or point --set model.pretrained=PATH "
                           "at it (a SegFormer checkpoint of mmseg's layout works too); null trains from random "
                           "initialisation.")


def preflight(cfg: dict, checkpoints: Sequence[str | os.PathLike] = ()) -> None:
    """What a run needs from the disk, checked before it writes anything (the log included) or indexes
    any data: the dataset root, the pretrained weights and the given checkpoints. A wrong path then
    costs seconds, not a COCO mask rendering, and leaves no empty log behind."""
    check_dataset_root(cfg)
    check_pretrained(cfg)
    for path in checkpoints:
        if not Path(path).is_file():
            raise WavecamError(f"checkpoint not found: {path} (from {os.getcwd()})")


def setup_logging(path: Path, ctx: dist.Context) -> None:
    # Dated timestamps: a VOC run takes most of a day, a COCO run several.
    dist.setup_logging(path, ctx, datefmt="%Y-%m-%d %H:%M:%S")


def make_source(cfg: dict):
    data = cfg["dataset"]
    check_dataset_root(cfg)
    if data["name"] == "voc":
        from wavecam.data.voc import VOC12

        return VOC12(data["root"], data.get("cache_dir"))
    if data["name"] == "coco":
        from wavecam.data.coco import COCO2014

        split_images, crowd = coco_policies(data)
        return COCO2014(data["root"], data.get("cache_dir"), split_images=split_images, crowd=crowd)
    raise WavecamError(f"dataset.name must be voc or coco, got {data['name']!r}")


def coco_policies(data: dict) -> tuple[str, str]:
    """The COCO source's split images and crowd policy. AFA's lists (datasets/coco/{train,val}.txt,
    82,081 and 40,137 images) leave out the images without annotations, so a config that does not
    name them gets `annotated`, and the crowd handling this trainer has always had (`ignore`)."""
    return data.get("coco_split_images", "annotated"), data.get("coco_crowd", "ignore")


def split_ids(source, name: str) -> list[str]:
    ids = source.split(name)
    if not ids:
        raise WavecamError(f"the id list {name} is empty")
    return ids


def prepare_gt(source, ids: list[str]) -> None:
    """Render ground-truth masks up front, in parallel, where the dataset renders them (COCO)."""
    if hasattr(source, "prepare_masks"):
        source.prepare_masks(ids)


def build_model(cfg: dict, num_classes: int) -> WaveAFA:
    """WaveAFA for `num_classes` foreground classes (the network counts the background too), started
    from `model.pretrained` where it is set."""
    m = cfg["model"]
    net = WaveAFA(m["backbone"], num_classes=num_classes + 1, stride=tuple(m["stride"]),
                  embedding_dim=m["embedding_dim"], pooling=m["pooling"], drop_path_rate=m["drop_path_rate"])
    if m.get("pretrained") is not None:
        log.info("pretrained: %s", load_pretrained(net, m["pretrained"]))
    else:
        log.info("pretrained: none, random initialisation (model.pretrained is null)")
    return net


def train_dataset(cfg: dict, source) -> E2ETrainDataset:
    data = cfg["dataset"]
    return E2ETrainDataset(source, split_ids(source, data["train_split"]), data["crop_size"],
                           tuple(data["scale_range"]) if data["scale_range"] else None,
                           resample=data["resample"], pad=data["pad"])


def amp_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA when `train.amp` is set (fp16 where bf16 is unsupported); None (float32) otherwise."""
    return autocast_dtype(bool(cfg["train"].get("amp")), device)


def autocast(cfg: dict, device: torch.device):
    dtype = amp_dtype(cfg, device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def amp_mode(cfg: dict, device: torch.device) -> str:
    """The precision a run trains in, in words for the log."""
    dtype = amp_dtype(cfg, device)
    if dtype is None:
        return "off (float32)" + (", train.amp is for CUDA only" if cfg["train"].get("amp") else "")
    return "bf16 autocast" if dtype == torch.bfloat16 else "fp16 autocast with loss scaling"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# --- optimiser -----------------------------------------------------------------------------------

def poly_warmup_adamw(model: WaveAFA, cfg: dict) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the model's groups and AFA's schedule, stepped once per iteration t (from 0):
    a linear warm-up from `warmup_ratio` x lr to lr over `warmup_iter` iterations, then
    lr * (1 - t / max_iters) ** power."""
    opt_cfg, sched_cfg = cfg["optimizer"], cfg["scheduler"]
    lr = float(opt_cfg["learning_rate"])
    opt = torch.optim.AdamW(model.param_groups(lr, float(opt_cfg["weight_decay"])), lr=lr,
                            betas=tuple(opt_cfg["betas"]), eps=1e-8)
    warmup, ratio = int(sched_cfg["warmup_iter"]), float(sched_cfg["warmup_ratio"])
    max_iters, power = int(cfg["train"]["max_iters"]), float(sched_cfg["power"])

    def factor(t: int) -> float:
        if t < warmup:
            return 1 - (1 - t / warmup) * (1 - ratio)
        return (1 - min(t, max_iters - 1) / max_iters) ** power

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass(frozen=True)
class BatchPlan:
    """How the processes take a global batch: each `per_process` images, as `steps` micro-batches of
    `micro` images whose gradients it accumulates before the optimiser steps."""

    global_batch: int
    world_size: int
    per_process: int
    micro: int
    steps: int

    def describe(self) -> str:
        accumulated = (f", gradients accumulated over {self.steps} micro-batches of {self.micro}"
                       if self.steps > 1 else "")
        return (f"global batch {self.global_batch} = {self.world_size} process(es) x {self.per_process} "
                f"image(s){accumulated}")


def batch_plan(batch_size: int, micro_batch: int, world_size: int) -> BatchPlan:
    """Split the global batch `batch_size` over `world_size` processes (they must divide it), each
    taking its share in the fewest equal micro-batches of at most `micro_batch` images. AFA's VOC step
    (2 processes x 2 images) is then the same on 2 GPUs, on 1 (2 micro-batches of 2) or on 4 (1 each)."""
    if batch_size < 1 or micro_batch < 1:
        raise WavecamError(f"train.batch_size ({batch_size}) and train.micro_batch ({micro_batch}) must be >= 1")
    if batch_size % world_size:
        raise WavecamError(f"train.batch_size {batch_size} is not divisible by the {world_size} processes; run a "
                           "number of processes that divides it (NPROC), or change the batch")
    per_process = batch_size // world_size
    steps = next(k for k in range(math.ceil(per_process / micro_batch), per_process + 1) if per_process % k == 0)
    return BatchPlan(batch_size, world_size, per_process, per_process // steps, steps)


def micro_batch_seed(seed: int, t: int, index: int) -> int:
    """The seed of torch's generators (dropout, stochastic depth) for micro-batch `index` of the
    global batch at iteration t, counted over all processes. A pure function of the step: the same
    micro-batch draws the same numbers whichever process takes it, so one process accumulating two
    micro-batches steps as two processes do, and a resumed run as an uninterrupted one."""
    return (seed * 10_000_019 + t) * 100_003 + index


def accumulated_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     chunks: Sequence[Any], loss_of: Callable[[Any, int], torch.Tensor]) -> None:
    """One optimiser step over this process's micro-batches `chunks`: `loss_of(chunk, k)` runs the
    forward and returns the chunk's loss, whose backward is taken divided by the number of chunks.

    The gradient is thus the mean of the chunks' gradients; DistributedDataParallel averages it over
    the processes, in the last backward only (the others run under `no_sync`), so the step's gradient
    is the mean over all micro-batches of the global batch, whichever way processes and accumulation
    share them. Where the loss is a mean over samples this is the gradient of the whole batch's loss;
    AFA's losses are means per process, and this is the mean its processes' DDP step takes."""
    opt.zero_grad(set_to_none=True)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    for k, chunk in enumerate(chunks):
        last = k == len(chunks) - 1
        with contextlib.nullcontext() if last or not ddp else model.no_sync():
            loss = loss_of(chunk, k)
            scaler.scale(loss / len(chunks)).backward()
    scaler.step(opt)
    scaler.update()


# --- data ----------------------------------------------------------------------------------------

class IterationBatches:
    """Batch sampler over iterations `start`..`stop`-1, yielding this rank's batch of (index, seed) keys.

    Iteration t belongs to epoch t // E (E = len(dataset) // global batch, the last partial batch
    dropped); each epoch is a permutation drawn from (seed, epoch) and split into global batches, each
    cut into one slice per rank. A sample's seed fixes its augmentation (see `SeededSamples`). Both
    depend only on (seed, t) and the global batch, so a run resumed at t sees exactly what an
    uninterrupted one would, and the global batch holds the same images at any number of processes."""

    def __init__(self, n: int, plan: BatchPlan, rank: int, seed: int, start: int, stop: int):
        self.global_batch = plan.global_batch
        if n < self.global_batch:
            raise WavecamError(f"{n} training images are fewer than one global batch of {self.global_batch}; "
                               "lower train.batch_size or use a larger split")
        self.n, self.per_rank, self.rank, self.seed = n, plan.per_process, rank, seed
        self.start, self.stop = start, stop
        self.per_epoch = n // self.global_batch

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, epoch = None, None
        for t in range(self.start, self.stop):
            if t // self.per_epoch != epoch:
                epoch = t // self.per_epoch
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            first = (t % self.per_epoch) * self.global_batch + self.rank * self.per_rank
            sample = t * self.global_batch + self.rank * self.per_rank  # a number no other sample of the run has
            yield [(int(order[first + k]), self.seed * 1_000_003 + sample + k) for k in range(self.per_rank)]


class SeededSamples(Dataset):
    """`dataset[index]` drawn under torch's generator seeded with the key's seed, so the random
    crop of a sample depends neither on the worker that loads it nor on what was loaded before."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def train_loader(dataset: Dataset, plan: BatchPlan, cfg: dict, ctx: dist.Context, start: int) -> DataLoader:
    """This process's images of every iteration from `start` on, as one batch of `plan.per_process`."""
    t = cfg["train"]
    batches = IterationBatches(len(dataset), plan, ctx.rank, t["seed"], start, t["max_iters"])
    # Its own generator: creating the loader must not draw from the global one that dropout uses.
    return DataLoader(SeededSamples(dataset), batch_sampler=batches, num_workers=t["num_workers"],
                      pin_memory=ctx.device.type == "cuda", generator=torch.Generator().manual_seed(t["seed"]))


def eval_loader(dataset: Dataset, cfg: dict, ctx: dist.Context) -> DataLoader:
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=cfg["train"]["num_workers"],
                      pin_memory=ctx.device.type == "cuda", generator=torch.Generator().manual_seed(0))


# --- logging -------------------------------------------------------------------------------------

class SmoothedValue:
    """A series' median over the last `window` values and its mean since the start."""

    def __init__(self, window: int = 20):
        self.recent: deque[float] = deque(maxlen=window)
        self.total, self.count = 0.0, 0

    def update(self, value: float) -> None:
        self.recent.append(value)
        self.total += value
        self.count += 1

    @property
    def median(self) -> float:
        return float(np.median(self.recent))

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)


class MetricLogger:
    """DINO-style progress: every `log_iters` iterations one line with the iteration, ETA, smoothed
    metrics, seconds per iteration (and waiting for data) and images per second over all ranks."""

    def __init__(self, start: int, stop: int, images_per_iter: int, log_iters: int):
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.start, self.stop, self.images_per_iter, self.log_iters = start, stop, images_per_iter, log_iters
        self.last = time.time()

    def update(self, **values: float) -> None:
        for k, v in values.items():
            self.meters[k].update(float(v))

    def iterations(self, loader: DataLoader) -> Iterator[tuple[int, Any]]:
        """(iteration, batch) pairs, timing the wait for each batch."""
        for t, batch in zip(range(self.start, self.stop), loader):
            self.update(data=time.time() - self.last)
            yield t, batch

    def step_done(self, t: int, **values: float) -> None:
        """Record iteration t's metrics and its time since the previous one; log every `log_iters`."""
        now = time.time()
        self.update(time=now - self.last, **values)
        self.last = now
        if (t + 1) % self.log_iters == 0 or t + 1 == self.stop:
            log.info(self.line(t))

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Leave what runs inside (validation, checkpoints) out of the iteration times and the ETA."""
        start = time.time()
        yield
        self.last += time.time() - start

    def line(self, t: int) -> str:
        step = self.meters["time"]
        eta = datetime.timedelta(seconds=int(step.global_avg * (self.stop - t - 1)))
        metrics = "  ".join(f"{k} {m.median:.4g} ({m.global_avg:.4g})" for k, m in self.meters.items()
                            if k not in ("time", "data"))
        return (f"iter {t + 1}/{self.stop}  eta {eta}  {metrics}  time {step.median:.3f}s  "
                f"data {self.meters['data'].median:.3f}s  {self.images_per_iter / max(step.median, 1e-9):.1f} img/s")


def tensorboard(log_dir: str | os.PathLike, ctx: dist.Context):
    """A SummaryWriter on rank 0 when TensorBoard is installed, else None."""
    if not ctx.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("TensorBoard is not installed, so there are no TensorBoard logs; it is one of wavecam's "
                    "dependencies: pip install tensorboard")
        return None
    return SummaryWriter(str(log_dir))


def add_scalars(writer, prefix: str, values: dict[str, float], step: int) -> None:
    if writer is not None:
        for k, v in values.items():
            writer.add_scalar(f"{prefix}/{k}", v, step)


# --- evaluation ----------------------------------------------------------------------------------

@torch.no_grad()
def validate(net: WaveAFA, loader: DataLoader, cfg: dict, ctx: dist.Context, num_classes: int
             ) -> dict[str, ConfusionMatrix]:
    """Confusions over the images of `loader` (all ranks summed) of AFA's three predictions: `cam`,
    the multi-scale CAMs with a background score of `cam.bkg_score`; `aff`, those CAMs propagated by
    the affinity of the last stage (background score `cam.low_thre`); `seg`, the segmentation head."""
    cam, device = cfg["cam"], ctx.device
    cms = {k: ConfusionMatrix(num_classes + 1) for k in ("cam", "aff", "seg")}
    was_training = net.training
    net.eval()
    for item in tqdm(loader, desc="validate", disable=not ctx.is_main, leave=False):
        images, labels, gt = item["img"].to(device), item["label"].to(device), item["gt"][0].numpy()
        with autocast(cfg, device):
            out = net(images)
            cams = lab.multi_scale_cams(net.cams_and_affinity, images, cam["scales"]).cams  # (1, C, H, W)
        grid = grid_size(images.shape[2:])
        aff = lab.propagate_cams(F.interpolate(cams, size=grid, mode="bilinear", align_corners=False),
                                 out.attn_pred.float(), labels, cam["low_thre"],
                                 lab.radius_mask(*grid, cam["radius"], device))
        preds = {"cam": lab.cam_to_label(cams, labels, cam["bkg_score"]),
                 "aff": F.interpolate(aff, size=gt.shape, mode="bilinear", align_corners=False).argmax(1),
                 "seg": F.interpolate(out.seg.float(), size=gt.shape, mode="bilinear", align_corners=False).argmax(1)}
        for k, pred in preds.items():
            cms[k].update(pred[0].cpu().numpy(), gt)
    net.train(was_training)
    dist.sum_confusions(list(cms.values()), ctx)
    return cms


def validation_loader(source, split: str, cfg: dict, ctx: dist.Context) -> DataLoader:
    """This rank's share of `split` with ground truth (rendered first where the dataset renders it)."""
    ids = dist.shard(split_ids(source, split), ctx)
    prepare_gt(source, ids)
    return eval_loader(SegmentationDataset(source, ids), cfg, ctx)


def settings(cfg: dict, work_dir: str | os.PathLike, eval_set: str) -> dict:
    """What every results/*.json records about the run that produced it (as the multi-stage passes)."""
    data = cfg["dataset"]
    recorded = {"dataset": data["name"], "data_root": os.path.abspath(data["root"]), "eval_set": eval_set,
                "work_space": os.path.abspath(work_dir), "cache_dir": data.get("cache_dir")}
    if data["name"] == "coco":
        recorded["coco_split_images"], recorded["coco_crowd"] = coco_policies(data)
    return recorded


@torch.no_grad()
def segment(net: WaveAFA, image: torch.Tensor, scales: Sequence[float], flip: bool,
            resize_long: int | None) -> torch.Tensor:
    """Segmentation logits (C, H, W) of one normalised image (1, 3, H, W), as AFA's test: the image is
    first resized to a long side of `resize_long`; at each scale the logits (with `flip`, averaged with
    those of the mirror image) are resized to the first scale's output size; the scales are maxed and
    the result resized to H x W."""
    h, w = image.shape[2:]
    if resize_long:
        ratio = resize_long / max(h, w)
        image = F.interpolate(image, size=(int(h * ratio), int(w * ratio)), mode="bilinear", align_corners=False)
    best, size = None, None
    for s in scales:
        x = image if s == 1 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
        seg = net(torch.cat([x, x.flip(-1)]) if flip else x).seg.float()
        seg = (seg[:1] + seg[1:].flip(-1)) / 2 if flip else seg
        size = size or seg.shape[2:]
        seg = F.interpolate(seg, size=size, mode="bilinear", align_corners=False)
        best = seg if best is None else torch.maximum(best, seg)
    return F.interpolate(best, size=(h, w), mode="bilinear", align_corners=False)[0]


def run_test(net: WaveAFA, cfg: dict, ctx: dist.Context, work_dir: str | os.PathLike,
             checkpoint: str | os.PathLike, iteration: int | None = None) -> dict | None:
    """Segment `test.eval_set` with the `test` settings, write `<work_dir>/test/<set>[_crf]/<id>.png`
    and, where the set has ground truth, `<work_dir>/results/test_<set>[_crf].json` (rank 0 returns it)."""
    test = cfg["test"]
    source = make_source(cfg)
    name = test["eval_set"] + ("_crf" if test["crf"] else "")
    out_dir = Path(work_dir) / "test" / name
    ids = dist.shard(split_ids(source, test["eval_set"]), ctx)
    if test["evaluate"]:
        prepare_gt(source, ids)
    dataset = SegmentationDataset(source, ids, test["evaluate"])
    cm = ConfusionMatrix(source.num_classes + 1)
    net.eval()
    with CRFWorkers(test["crf_workers"] if test["crf"] else 0) as post:
        for item in tqdm(eval_loader(dataset, cfg, ctx), desc=f"test {name}", disable=not ctx.is_main):
            with autocast(cfg, ctx.device):
                logits = segment(net, item["img"].to(ctx.device), test["scales"], test["flip"], test["resize_long"])
            gt = item["gt"][0].numpy() if test["evaluate"] else None
            path = out_dir / f"{item['name'][0]}.png"
            if test["crf"]:
                image = source.load_image(item["name"][0])
                done = post.submit(image, logits.softmax(0).cpu().numpy(), path, gt)
            else:
                done = [(_save_prediction(logits.argmax(0).cpu().numpy(), path), gt)]
            for pred, gt_done in done:
                if gt_done is not None:
                    cm.update(pred, gt_done)
        for pred, gt_done in post.drain():
            if gt_done is not None:
                cm.update(pred, gt_done)
    if not test["evaluate"]:
        log.info("test: wrote %s (no evaluation: test.evaluate is false)", out_dir)
        return None
    dist.sum_confusions([cm], ctx)
    if not ctx.is_main:
        return None
    result = {**cm.summary(), "checkpoint": os.path.abspath(checkpoint), "iteration": iteration,
              **{k: test[k] for k in ("scales", "flip", "resize_long", "crf")},
              "prediction_dir": os.path.abspath(out_dir), **settings(cfg, work_dir, test["eval_set"])}
    save_json(Path(work_dir) / "results" / f"test_{name}.json", result)
    log.info("test %s: mIoU %.4f on %d images", name, result["miou"], result["n_images"])
    return result


def _save_prediction(pred: np.ndarray, path: Path) -> np.ndarray:
    pred = pred.astype(np.uint8)
    save_png(path, pred)
    return pred


def _crf_prediction(image: np.ndarray, probs: np.ndarray, path: Path) -> np.ndarray:
    return _save_prediction(crf_inference_prob(image, probs).argmax(0), path)


class CRFWorkers:
    """The dense CRF of each test image in `workers` processes beside the network, which meanwhile
    segments the next images (0: in this process, one image after the other). At most 2 x workers
    images wait, so memory stays bounded. `submit` and `drain` return the finished (prediction, gt)."""

    def __init__(self, workers: int):
        self.workers, self.pool, self.waiting = workers, None, []

    def __enter__(self) -> CRFWorkers:
        if self.workers > 0:
            import multiprocessing as mp

            # spawn: forked children of a process that has run torch/OpenMP threads can deadlock.
            self.pool = mp.get_context("spawn").Pool(self.workers)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is None:
            return
        if exc[0] is None:
            self.pool.close()
        else:  # an error in the loop: waiting images do not matter any more
            self.pool.terminate()
        self.pool.join()

    def submit(self, image: np.ndarray, probs: np.ndarray, path: Path, gt: np.ndarray | None) -> list:
        if self.pool is None:
            return [(_crf_prediction(image, probs, path), gt)]
        self.waiting.append((self.pool.apply_async(_crf_prediction, (image, probs, path)), gt))
        done = []
        while len(self.waiting) > 2 * self.workers or (self.waiting and self.waiting[0][0].ready()):
            job, gt_done = self.waiting.pop(0)
            done.append((job.get(), gt_done))
        return done

    def drain(self) -> list:
        done = [(job.get(), gt) for job, gt in self.waiting]
        self.waiting = []
        return done


def latest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest iteration in `<work_dir>/checkpoints`, if any."""
    found = sorted(Path(work_dir, "checkpoints").glob("iter_*.pth"), key=lambda p: p.stem)
    return found[-1] if found else None


def checkpoint_path(work_dir: str | os.PathLike, iteration: int) -> Path:
    # Zero-padded so that names sort in iteration order.
    return Path(work_dir) / "checkpoints" / f"iter_{iteration:07d}.pth"


def grid_size(size: Sequence[int], stride: int = 16) -> tuple[int, int]:
    """The last stage's grid for an input of `size`: every stage rounds up."""
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


def run_cli(job: Callable[[], None]) -> int:
    """Run a command-line job: a WavecamError becomes one `error:` line and exit code 2, and the
    process group (if any) is torn down whatever happens."""
    try:
        job()
    except WavecamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    return 0
