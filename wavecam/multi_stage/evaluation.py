"""Shared by the evaluation passes: ground truth preparation and the settings their results record."""

from __future__ import annotations

import os


def prepare_gt(source, ids: list[str]) -> None:
    """Render ground-truth masks in parallel up front where the dataset renders them (COCO)."""
    if hasattr(source, "prepare_masks"):
        source.prepare_masks(ids)


def settings(args) -> dict:
    """What every results/*.json records about the run that produced it."""
    root = args.voc12_root if args.dataset == "voc" else args.mscoco_root
    recorded = {"dataset": args.dataset, "data_root": os.path.abspath(root), "eval_set": args.chainer_eval_set,
                "work_space": os.path.abspath(args.work_space), "cache_dir": args.cache_dir}
    if args.dataset == "coco":  # they decide which images were scored and what a crowd pixel counted as
        recorded.update(coco_split_images=args.coco_split_images, coco_crowd=args.coco_crowd)
    return recorded
