"""What the multi-stage eval passes share: the settings results record (engine.results.run_settings,
from the flags) and the background-threshold sweep of eval_cam and eval_sem_seg."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wavecam.engine.results import run_settings
from wavecam.metrics import ConfusionMatrix


def settings(args) -> dict:
    """What every results/*.json records about the run that produced it."""
    root = args.voc12_root if args.dataset == "voc" else args.mscoco_root
    return run_settings(args.dataset, root, args.chainer_eval_set, args.work_space, args.cache_dir,
                        getattr(args, "coco_split_images", None), getattr(args, "coco_crowd", None))


def sweep_thresholds(main: float, sweep: Sequence[float] | None) -> list[float]:
    """`main` and, with a (start, stop, step) sweep, every threshold from start to stop, sorted."""
    ts = [main]
    if sweep:
        start, stop, step = sweep
        ts += [round(t, 4) for t in np.arange(start, stop + step / 2, step)]
    return sorted(set(ts))


def sweep_summary(thresholds: Sequence[float], cms: Sequence[ConfusionMatrix]) -> dict:
    """best_threshold, best_miou and the sweep [{threshold, miou}] of one confusion matrix per threshold."""
    sweep = [{"threshold": t, "miou": cm.miou()} for t, cm in zip(thresholds, cms, strict=True)]
    best = max(sweep, key=lambda r: r["miou"])
    return {"best_threshold": best["threshold"], "best_miou": best["miou"], "sweep": sweep}


def sweep_line(summary: dict) -> str:
    return ("threshold sweep: " + ", ".join(f"{r['threshold']:.2f}: {100 * r['miou']:.1f}" for r in summary["sweep"])
            + f"\nbest threshold {summary['best_threshold']:.2f}: mIoU {100 * summary['best_miou']:.1f}")
