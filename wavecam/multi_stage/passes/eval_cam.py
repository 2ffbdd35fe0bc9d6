"""eval_cam: mIoU of CAM seeds (background at --cam_eval_thres), optionally over a threshold sweep."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tqdm import tqdm

from wavecam.data.datasets import checked_gt, prepare_gt, split_ids
from wavecam.engine import runtime
from wavecam.engine.provenance import folder_maker
from wavecam.errors import BadFileError
from wavecam.io import save_json
from wavecam.labels.cam import seeds
from wavecam.metrics import ConfusionMatrix, format_iou_table
from wavecam.multi_stage.evaluation import settings, sweep_line, sweep_summary, sweep_thresholds
from wavecam.multi_stage.pass_io import make_source, read_cam
from wavecam.multi_stage.workspace import CAMS, results_path

log = logging.getLogger("wavecam")


def cam_file(args, image_id: str) -> Path:
    """The file read_cam read: ours, or the reference's pickle beside where ours would be."""
    path = Path(CAMS.path(args, image_id))
    return path if path.is_file() else path.with_suffix(".npy")


def run(args) -> None:
    ctx = runtime.init(args.device)
    source = make_source(args)
    ids = split_ids(source, args.chainer_eval_set)
    prepare_gt(source, runtime.shard(ids, ctx))
    ts = sweep_thresholds(args.cam_eval_thres, args.cam_eval_sweep)
    cms = [ConfusionMatrix(source.num_classes + 1) for _ in ts]
    for image_id in tqdm(runtime.shard(ids, ctx), desc="eval_cam", disable=not ctx.is_main):
        cam = read_cam(args, image_id)
        gt = checked_gt(source, image_id)
        if cam["high_res"].shape[1:] != gt.shape:
            raise BadFileError(f"CAMs {cam_file(args, image_id)} are {cam['high_res'].shape[1]}x"
                               f"{cam['high_res'].shape[2]} but its ground truth is {gt.shape[0]}x{gt.shape[1]}; "
                               "delete it and re-run --make_wavecam_pass (or --make_cam_pass)")
        for t, cm in zip(ts, cms):
            cm.update(seeds(cam, t), gt)
    runtime.sum_confusions(cms, ctx)
    if not ctx.is_main:
        return
    main = cms[ts.index(args.cam_eval_thres)]
    result = {
        **main.summary(),
        "threshold": args.cam_eval_thres,
        **sweep_summary(ts, cms),
        "cam_out_dir": os.path.abspath(args.cam_out_dir),
        "cams_made_by": folder_maker(args.cam_out_dir),
        **settings(args),
    }
    save_json(results_path(args.work_space, "eval_cam"), result)
    print(format_iou_table(result["iou"], source.class_names, title=f"CAM seeds, threshold {args.cam_eval_thres}"))
    if len(ts) > 1:
        print(sweep_line(result))
    log.info("eval_cam: mIoU %.4f at threshold %.2f on %d images", result["miou"], args.cam_eval_thres,
             result["n_images"])
