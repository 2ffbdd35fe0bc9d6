"""The data of a run: the dataset source the config names, its id lists, the training crops and
the loaders (training: this process's images of every iteration; evaluation: one image at a time)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from wavecam.data.datasets import E2ETrainDataset, SegmentationDataset, open_source, prepare_gt, split_ids
from wavecam.end_to_end.config import Config
from wavecam.end_to_end.preflight import check_dataset_root
from wavecam.engine import runtime, sampling
from wavecam.engine.sampling import BatchPlan
from wavecam.errors import WavecamError


def make_source(cfg: Config):
    """The dataset of `dataset.name` at `dataset.root`."""
    data = cfg.dataset
    check_dataset_root(cfg)
    if data.name not in ("voc", "coco"):
        raise WavecamError(f"dataset.name must be voc or coco, got {data.name!r}")
    return open_source(data.name, data.root, data.cache_dir, root_option="dataset.root",
                       coco_split_images=data.coco_split_images, coco_crowd=data.coco_crowd)


def train_dataset(cfg: Config, source) -> E2ETrainDataset:
    data = cfg.dataset
    return E2ETrainDataset(source, split_ids(source, data.train_split), data.crop_size,
                           tuple(data.scale_range) if data.scale_range else None,
                           resample=data.resample, pad=data.pad)


def train_loader(dataset: Dataset, plan: BatchPlan, cfg: Config, ctx: runtime.Context, start: int) -> DataLoader:
    """This process's images of every iteration from `start` on, as one batch of `plan.per_process`."""
    t = cfg.train
    return sampling.train_loader(dataset, plan, ctx.rank, t.seed, start, t.max_iters, "step",
                                 num_workers=t.num_workers, pin_memory=ctx.device.type == "cuda")


def eval_loader(dataset: Dataset, cfg: Config, ctx: runtime.Context) -> DataLoader:
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=cfg.train.num_workers,
                      pin_memory=ctx.device.type == "cuda", generator=torch.Generator().manual_seed(0))


def validation_loader(source, split: str, cfg: Config, ctx: runtime.Context) -> DataLoader:
    """This rank's share of `split` with ground truth (rendered first where the dataset renders it)."""
    ids = runtime.shard(split_ids(source, split), ctx)
    prepare_gt(source, ids)
    return eval_loader(SegmentationDataset(source, ids), cfg, ctx)
