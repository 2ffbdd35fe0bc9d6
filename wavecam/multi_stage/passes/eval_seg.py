"""eval_seg (stage 3): mIoU of make_seg's predictions on --seg_eval_set, with and without the
dense CRF; the paper's final numbers. Writes results/eval_seg.json (the CRF's result at the top
level with --seg_crf, both under "variants") and logs the per-class IoU tables."""

from __future__ import annotations

import logging
import os

from tqdm import tqdm

from wavecam.data.datasets import checked_gt, prepare_gt, split_ids
from wavecam.engine.provenance import folder_maker
from wavecam.engine.results import write_result
from wavecam.engine.runtime import init, shard, sum_confusions
from wavecam.errors import WavecamError
from wavecam.io import load_label_map
from wavecam.metrics import ConfusionMatrix, format_iou_table
from wavecam.multi_stage.evaluation import settings
from wavecam.multi_stage.pass_io import make_source
from wavecam.multi_stage.workspace import results_path, seg_predictions

log = logging.getLogger("wavecam")


def run(args) -> None:
    ctx = init(args.device)
    source = make_source(args)
    ids = split_ids(source, args.seg_eval_set)
    mine = shard(ids, ctx)
    prepare_gt(source, mine)
    variants = ("crf", "no_crf") if args.seg_crf else ("no_crf",)
    cms = {v: ConfusionMatrix(source.num_classes + 1) for v in variants}
    for image_id in tqdm(mine, desc="eval_seg", disable=not ctx.is_main):
        gt = checked_gt(source, image_id)
        for variant, cm in cms.items():
            path = os.path.join(seg_predictions(args, args.seg_eval_set, crf=variant == "crf"), f"{image_id}.png")
            if not os.path.isfile(path):
                raise WavecamError(f"no prediction for id {image_id} ({path}); run --make_seg_pass first with the "
                                   "same --seg_eval_set and --seg_crf")
            cm.update(load_label_map(path, source.num_classes, size=gt.shape, size_of="its ground truth",
                                     ignore=False, what="prediction", fix="delete it and re-run --make_seg_pass"), gt)
    sum_confusions(list(cms.values()), ctx)
    if not ctx.is_main:
        return
    summaries = {v: cm.summary() for v, cm in cms.items()}
    for variant, summary in summaries.items():
        title = f"stage 3 ({args.seg_network}), {args.seg_eval_set}, {variant.replace('_', ' ')}"
        table = format_iou_table(summary["iou"], source.class_names, title=title)
        log.info("\n%s", table)
        print(table)
    record = write_result(results_path(args.work_space, "eval_seg"), {
        **summaries[variants[0]], "crf": variants[0] == "crf", "variants": summaries,
        "seg_network": args.seg_network, "seg_weights": os.path.abspath(args.seg_weights_name),
        "seg_out_dir": os.path.abspath(args.seg_out_dir),
        "predictions_made_by": {v: folder_maker(seg_predictions(args, args.seg_eval_set, crf=v == "crf"))
                                for v in variants}}, {**settings(args), "eval_set": args.seg_eval_set})
    log.info("eval_seg: mIoU %.4f (%s) on %d images", record["miou"], variants[0], record["n_images"])
