"""results/*.json: a result with the settings of the run that produced it."""

from __future__ import annotations

import os

from wavecam.io import save_json


def run_settings(dataset: str, data_root: str, eval_set: str, work_space: str | os.PathLike,
                 cache_dir: str | None, coco_split_images: str | None = None,
                 coco_crowd: str | None = None) -> dict:
    """What every results/*.json records about the run that produced it, in both pipelines. On COCO
    the split and crowd policies decide which images were scored and what a crowd pixel counted as."""
    recorded = {"dataset": dataset, "data_root": os.path.abspath(data_root), "eval_set": eval_set,
                "work_space": os.path.abspath(work_space), "cache_dir": cache_dir}
    if dataset == "coco":
        recorded.update(coco_split_images=coco_split_images, coco_crowd=coco_crowd)
    return recorded


def write_result(path: str | os.PathLike, result: dict, settings: dict) -> dict:
    """Write `result` (at least miou, iou, n_images) with `settings` to `path`; returns what was written."""
    record = {**result, **settings}
    save_json(path, record)
    return record
