"""make_sem_seg: IRN's boundary map (image + flip) -> affinities within radius 5 -> random walk
of the stride-4 CAMs -> sem_seg/<id>.png with background at --sem_seg_bg_thres."""

from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from wavecam import dist
from wavecam.data.datasets import InferenceDataset
from wavecam.io import save_png
from wavecam.models.irn import EdgeDisplacement
from wavecam.randomwalk import propagate, rw_to_label

from step.common import loader_options, make_source, pending, place, read_cam, resolve_list, skip_bad_image

log = logging.getLogger("wavecam")


@torch.no_grad()
def run(args) -> None:
    ctx = dist.init(args.device)
    source = make_source(args)
    ids = pending(resolve_list(source, args.infer_list), args.sem_seg_out_dir, ".png", args, ctx)
    log.info("make_sem_seg: %d images to do", len(ids))
    model = place(EdgeDisplacement.from_checkpoint(args.irn_weights_name, crop_size=args.irn_crop_size,
                                                   arch=args.irn_network, pad_to_crop=args.irn_pad_to_crop),
                  args, ctx)
    loader = DataLoader(InferenceDataset(source, ids, with_labels=False, skip_bad=args.skip_bad_images),
                        batch_size=None, **loader_options(args, ctx, workers=min(args.num_workers, 4)))
    for pack in tqdm(loader, desc="make_sem_seg", disable=not ctx.is_main):
        image_id = pack["name"]
        if "bad" in pack:
            skip_bad_image(args, "make_sem_seg", image_id, pack["bad"])
            continue
        cam = read_cam(args, image_id)
        strided = torch.from_numpy(cam["cam"]).to(ctx.device)
        if len(cam["keys"]):
            edge, _ = model(pack["img"].to(ctx.device))
            rw = propagate(strided, edge, beta=args.beta, exp_times=args.exp_times, radius=5)
        else:  # an image without classes (COCO has some): nothing to walk, all background as in ReCAM
            rw = strided
        label = rw_to_label(rw, cam["keys"], args.sem_seg_bg_thres, pack["size"])
        save_png(os.path.join(args.sem_seg_out_dir, f"{image_id}.png"), label.astype("uint8"))
    dist.barrier(ctx)
