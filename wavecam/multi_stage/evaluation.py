"""The settings multi-stage results record (engine.results.run_settings, from the flags)."""

from __future__ import annotations

from wavecam.engine.results import run_settings


def settings(args) -> dict:
    """What every results/*.json records about the run that produced it."""
    root = args.voc12_root if args.dataset == "voc" else args.mscoco_root
    return run_settings(args.dataset, root, args.chainer_eval_set, args.work_space, args.cache_dir,
                        getattr(args, "coco_split_images", None), getattr(args, "coco_crowd", None))
