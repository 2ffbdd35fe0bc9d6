"""Score a checkpoint without training: its CAM pseudo labels, their affinity-propagated version and
its segmentation head on a split, as train.py's validation does every `train.eval_iters` iterations.

    torchrun --nproc_per_node N end_to_end/evaluate.py --config end_to_end/configs/voc.yaml \
        --checkpoint PATH [--split val] [--cams auto|classifier|wavecam] [--work_dir DIR] [--set ...]

The checkpoint is one of train.py's, AFA's `wetr_iter_*.pth` or a SegFormer checkpoint of mmseg's
layout (which has no classifier: its CAM and propagated scores then say nothing). Writes
<work_dir>/results/eval_<split>_{cam,aff,seg}.json and prints the three mIoUs and the segmentation's
IoU table; test.py gives the segmentation's multi-scale, flipped (and CRF) score instead.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from wavecam.end_to_end.config import Config, config_from_args, front_door_parser
from wavecam.end_to_end.data import make_source, validation_loader
from wavecam.end_to_end.evaluation import settings, validate
from wavecam.end_to_end.model import load_trained
from wavecam.end_to_end.preflight import preflight
from wavecam.engine import runtime
from wavecam.engine.cli import run_cli
from wavecam.engine.logging import DATED, setup_logging
from wavecam.io import save_json
from wavecam.metrics import format_iou_table
from wavecam.models.e2e import WAVECAM_PARTS

log = logging.getLogger("wavecam")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = front_door_parser("Score an end-to-end checkpoint's CAMs, propagated CAMs and segmentation.",
                          "where results go (default: the config's work_dir)", "dataset.root=/data/VOC2012")
    p.add_argument("--checkpoint", required=True, help="train.py's iter_<t>.pth, AFA's wetr_iter_<t>.pth, ...")
    p.add_argument("--split", default=None, help="the split to score (default: the config's val.split)")
    p.add_argument("--cams", default="auto", choices=("auto", "classifier", "wavecam"),
                   help="the kernel of the CAMs: auto takes the WaveCAM kernel where the checkpoint's iteration is "
                        "past wavecam.cams_iter and it has the WaveCAM parts, as training's validation did")
    return p.parse_args(argv)


def wavecam_cams(choice: str, cfg: Config, iteration: int | None, parts: tuple[str, ...]) -> bool:
    """Whether the CAMs come from the WaveCAM kernel. A checkpoint written after iteration T was last
    trained at step T - 1, whose pseudo labels used the WaveCAM kernel when T - 1 > wavecam.cams_iter
    (train.stage_at); only a checkpoint with the WaveCAM parts can."""
    if choice != "auto":
        return choice == "wavecam"
    has_wavecam = all(p in parts for p in WAVECAM_PARTS)
    return has_wavecam and iteration is not None and iteration - 1 > cfg.wavecam.cams_iter


def evaluate(cfg: Config, checkpoint: str, split: str, cams: str, ctx: runtime.Context) -> dict[str, dict] | None:
    """Score `checkpoint` on `split`; rank 0 returns {kind: result} for cam, aff and seg."""
    work_dir = Path(cfg.work_dir)
    cfg.model.pretrained = None  # every weight comes from the checkpoint
    preflight(cfg, [checkpoint])
    setup_logging(work_dir / "evaluate.log", ctx, DATED)
    source = make_source(cfg)
    net, parts, iteration = load_trained(cfg, source.num_classes, checkpoint, ctx.device)
    net.use_wavecam_cams = wavecam_cams(cams, cfg, iteration, parts)
    log.info("%s: %s loaded (iteration %s); CAMs from the %s kernel", checkpoint, ", ".join(parts), iteration,
             "WaveCAM" if net.use_wavecam_cams else "classifier's")
    if "classifier" not in parts:
        log.warning("%s has no classifier: its CAM and propagated scores are those of an untrained one", checkpoint)
    cms = validate(net, validation_loader(source, split, cfg, ctx), cfg, ctx, source.num_classes)
    if not ctx.is_main:
        return None
    results = {}
    for kind, cm in cms.items():
        results[kind] = {**cm.summary(), "checkpoint": os.path.abspath(checkpoint), "iteration": iteration,
                         "cams": "wavecam" if net.use_wavecam_cams else "classifier",
                         **settings(cfg, work_dir, split)}
        save_json(work_dir / "results" / f"eval_{split}_{kind}.json", results[kind])
    log.info("%s on %d images: mIoU cam %.4f  aff %.4f  seg %.4f", split, cms["seg"].n_images,
             cms["cam"].miou(), cms["aff"].miou(), cms["seg"].miou())
    print(format_iou_table(results["seg"]["iou"], source.class_names, title=f"segmentation, {split}"))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        cfg = config_from_args(args)
        evaluate(cfg, args.checkpoint, args.split or cfg.val.split, args.cams, runtime.init(args.device))

    return run_cli(job, "--work_dir")
