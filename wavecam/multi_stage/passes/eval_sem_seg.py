"""eval_sem_seg: mIoU of the pseudo labels in sem_seg/ (255 'unsure' counted as background)."""

from __future__ import annotations

import logging
import os

from tqdm import tqdm

from wavecam.data.classes import IGNORE_INDEX
from wavecam.data.datasets import prepare_gt, split_ids
from wavecam.engine import runtime
from wavecam.io import WavecamError, load_png, save_json
from wavecam.metrics import ConfusionMatrix, format_iou_table
from wavecam.multi_stage.common import make_source
from wavecam.multi_stage.evaluation import settings
from wavecam.multi_stage.workspace import SEM_SEG, results_path

log = logging.getLogger("wavecam")


def run(args) -> None:
    ctx = runtime.init(args.device)
    source = make_source(args)
    ids = split_ids(source, args.chainer_eval_set)
    prepare_gt(source, runtime.shard(ids, ctx))
    cm = ConfusionMatrix(source.num_classes + 1)
    for image_id in tqdm(runtime.shard(ids, ctx), desc="eval_sem_seg", disable=not ctx.is_main):
        path = SEM_SEG.path(args, image_id)
        if not os.path.isfile(path):
            raise WavecamError(f"no pseudo label for id {image_id} ({path}); run --make_sem_seg_pass first "
                               "with --infer_list covering the evaluation set")
        pred = load_png(path).copy()
        pred[pred == IGNORE_INDEX] = 0
        cm.update(pred, source.load_gt(image_id))
    runtime.sum_confusions([cm], ctx)
    if not ctx.is_main:
        return
    result = {**cm.summary(), "sem_seg_bg_thres": args.sem_seg_bg_thres, "beta": args.beta,
              "exp_times": args.exp_times, "sem_seg_out_dir": os.path.abspath(args.sem_seg_out_dir),
              "cam_out_dir": os.path.abspath(args.cam_out_dir), **settings(args)}
    save_json(results_path(args.work_space, "eval_sem_seg"), result)
    print(format_iou_table(result["iou"], source.class_names, title="IRN pseudo labels"))
    log.info("eval_sem_seg: mIoU %.4f on %d images", result["miou"], result["n_images"])
