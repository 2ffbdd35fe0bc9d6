"""cam_to_ir_label: confident foreground/background from CAMs, each refined by a dense CRF,
combined into ir_label/<id>.png (0 background, 1..C classes, 255 unsure)."""

from __future__ import annotations

import functools
import logging

import numpy as np

from wavecam.classes import IGNORE_INDEX
from wavecam.data.datasets import split_ids
from wavecam.engine import runtime
from wavecam.engine.parallel import map_images
from wavecam.engine.provenance import folder_identity
from wavecam.io import save_png
from wavecam.labels.cam import channel_classes, threshold_channels
from wavecam.labels.crf import crf_inference_labels
from wavecam.multi_stage.pass_io import claim_outputs, data_identity, load_image_or_skip, make_source, pick, read_cam
from wavecam.multi_stage.workspace import CAMS, IR_LABELS

log = logging.getLogger("wavecam")


def confident_label(img: np.ndarray, cam: dict, fg_thres: float, bg_thres: float) -> np.ndarray:
    if not len(cam["keys"]):  # an image without classes (COCO has some): confidently background, as in ReCAM
        return np.zeros(img.shape[:2], np.uint8)
    keys = channel_classes(cam["keys"])
    hr = cam["high_res"]
    # Both refinements share the image's pairwise terms (see crf_inference_labels).
    fg, bg = (keys[r] for r in crf_inference_labels(img, [threshold_channels(hr, fg_thres),
                                                          threshold_channels(hr, bg_thres)], n_labels=len(keys)))
    conf = fg.copy()
    conf[fg == 0] = IGNORE_INDEX  # not confidently foreground ...
    conf[(fg == 0) & (bg == 0)] = 0  # ... unless background even at the low threshold
    return conf.astype(np.uint8)


def write_ir_label(image_id: str, args, source) -> None:
    img = load_image_or_skip(source, args, "cam_to_ir_label", image_id)
    if img is None:
        return
    label = confident_label(img, read_cam(args, image_id), args.conf_fg_thres, args.conf_bg_thres)
    save_png(IR_LABELS.path(args, image_id), label)


def run(args) -> None:
    ctx = runtime.init(args.device)
    source = make_source(args)
    maker = {"pass": "cam_to_ir_label", **data_identity(args), "cams": folder_identity(CAMS.folder(args)),
             **pick(args, "conf_fg_thres", "conf_bg_thres")}
    ids = claim_outputs(split_ids(source, args.train_list), IR_LABELS.folder(args), IR_LABELS.suffix, maker, args,
                        ctx, "cam_to_ir_label")
    log.info("cam_to_ir_label: %d images to do", len(ids))
    map_images(functools.partial(write_ir_label, args=args, source=source), ids, args.num_workers, "cam_to_ir_label",
               show=ctx.is_main)
    runtime.barrier(ctx)
