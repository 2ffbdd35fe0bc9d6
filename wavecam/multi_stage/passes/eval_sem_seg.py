"""eval_sem_seg: mIoU of the pseudo labels in sem_seg/ (255 'unsure' counted as background); with
--sem_seg_eval_sweep also of the labels that make_sem_seg's kept scores give at each background
threshold of the sweep (best_threshold, best_miou, sweep in the results, as eval_cam's)."""

from __future__ import annotations

import logging
import os

from tqdm import tqdm

from wavecam.data.datasets import checked_gt, prepare_gt, split_ids
from wavecam.engine import runtime
from wavecam.engine.provenance import folder_maker
from wavecam.errors import BadFileError, WavecamError
from wavecam.io import load_label_map, load_npz, save_json
from wavecam.labels.randomwalk import rw_to_label
from wavecam.metrics import ConfusionMatrix, format_iou_table, unsure_as_background
from wavecam.multi_stage.evaluation import settings, sweep_line, sweep_summary, sweep_thresholds
from wavecam.multi_stage.pass_io import make_source
from wavecam.multi_stage.workspace import SEM_SEG, SEM_SEG_SCORES, results_path

log = logging.getLogger("wavecam")


def read_scores(args, image_id: str) -> dict:
    path = SEM_SEG_SCORES.path(args, image_id)
    if not os.path.isfile(path):
        raise WavecamError(f"no walked scores for id {image_id} ({path}); run --make_sem_seg_pass with "
                           "--sem_seg_eval_sweep first (it adds them to labels it wrote before)")
    scores = load_npz(path)
    if set(scores) != {"keys", "rw", "size"} or scores["rw"].ndim != 3 or len(scores["rw"]) != len(scores["keys"]):
        raise BadFileError(f"{path}: not a sem_seg score file (keys, rw (K, h, w), size); re-run make_sem_seg "
                           "with --sem_seg_eval_sweep and --force True to rewrite it")
    return scores


def run(args) -> None:
    ctx = runtime.init(args.device)
    source = make_source(args)
    ids = split_ids(source, args.chainer_eval_set)
    prepare_gt(source, runtime.shard(ids, ctx))
    cm = ConfusionMatrix(source.num_classes + 1)
    ts = sweep_thresholds(args.sem_seg_bg_thres, args.sem_seg_eval_sweep) if args.sem_seg_eval_sweep else []
    sweep_cms = [ConfusionMatrix(source.num_classes + 1) for _ in ts]
    for image_id in tqdm(runtime.shard(ids, ctx), desc="eval_sem_seg", disable=not ctx.is_main):
        path = SEM_SEG.path(args, image_id)
        if not os.path.isfile(path):
            raise WavecamError(f"no pseudo label for id {image_id} ({path}); run --make_sem_seg_pass first "
                               "with --infer_list covering the evaluation set")
        gt = checked_gt(source, image_id)
        pred = load_label_map(path, source.num_classes, size=gt.shape, size_of="its ground truth",
                              what="pseudo label", fix="delete it and re-run --make_sem_seg_pass")
        pred = unsure_as_background(pred)
        cm.update(pred, gt)
        if ts:
            scores = read_scores(args, image_id)
            if tuple(scores["size"]) != gt.shape:
                raise BadFileError(f"walked scores {SEM_SEG_SCORES.path(args, image_id)} are for "
                                   f"{scores['size'][0]}x{scores['size'][1]} but its ground truth is "
                                   f"{gt.shape[0]}x{gt.shape[1]}; delete it and re-run --make_sem_seg_pass "
                                   "with --sem_seg_eval_sweep")
            for t, sweep_cm in zip(ts, sweep_cms):
                sweep_cm.update(rw_to_label(scores["rw"], scores["keys"], t, scores["size"]), gt)
    runtime.sum_confusions([cm, *sweep_cms], ctx)
    if not ctx.is_main:
        return
    result = {**cm.summary(), "sem_seg_bg_thres": args.sem_seg_bg_thres, "beta": args.beta,
              "exp_times": args.exp_times, "sem_seg_out_dir": os.path.abspath(args.sem_seg_out_dir),
              "cam_out_dir": os.path.abspath(args.cam_out_dir),
              "sem_seg_made_by": folder_maker(args.sem_seg_out_dir), **settings(args)}
    if ts:
        result.update(sweep_summary(ts, sweep_cms))
    save_json(results_path(args.work_space, "eval_sem_seg"), result)
    print(format_iou_table(result["iou"], source.class_names, title="IRN pseudo labels"))
    if ts:
        print(sweep_line(result))
    log.info("eval_sem_seg: mIoU %.4f on %d images", result["miou"], result["n_images"])
