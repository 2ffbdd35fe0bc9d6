"""Shared by the evaluation passes: where results go and how rank-local confusions combine."""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist

from wavecam import dist
from wavecam.metrics import ConfusionMatrix


def prepare_gt(source, ids: list[str]) -> None:
    """Render ground-truth masks in parallel up front where the dataset renders them (COCO)."""
    if hasattr(source, "prepare_masks"):
        source.prepare_masks(ids)


def settings(args) -> dict:
    """What every results/*.json records about the run that produced it."""
    root = args.voc12_root if args.dataset == "voc" else args.mscoco_root
    return {"dataset": args.dataset, "data_root": os.path.abspath(root), "eval_set": args.chainer_eval_set,
            "work_space": os.path.abspath(args.work_space), "cache_dir": args.cache_dir}


def results_path(args, name: str) -> str:
    return os.path.join(args.work_space, "results", f"{name}.json")


def gather_confusions(cms: list[ConfusionMatrix], ctx: dist.Context) -> list[ConfusionMatrix]:
    """Sum every rank's confusion matrices (and image counts) onto all ranks."""
    if not ctx.distributed:
        return cms
    mats = torch.stack([torch.from_numpy(cm.mat) for cm in cms])
    counts = torch.tensor([cm.n_images for cm in cms], dtype=torch.int64)
    # gloo and nccl both reduce int64; CUDA tensors only for nccl.
    dev = ctx.device if tdist.get_backend() == "nccl" else torch.device("cpu")
    mats, counts = mats.to(dev), counts.to(dev)
    tdist.all_reduce(mats)
    tdist.all_reduce(counts)
    for cm, m, c in zip(cms, mats.cpu().numpy(), counts.cpu().tolist()):
        cm.mat, cm.n_images = m, c
    return cms
