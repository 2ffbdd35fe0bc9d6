"""make_cam: multi-scale, flipped CAMs of the plain classifier into cam_mask/<id>.npz."""

from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from wavecam import dist
from wavecam.cam import multiscale_cam
from wavecam.data.datasets import InferenceDataset
from wavecam.io import save_cam
from wavecam.models import CAMNet
from wavecam.models.cam import cam_weight, load_cam_weights

from step.common import make_source, pending, resolve_list, skip_bad_image

log = logging.getLogger("wavecam")


def amp_dtype(args, device: torch.device) -> torch.dtype | None:
    if not (args.amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def write_cams(args, model: CAMNet, weight: torch.Tensor, desc: str) -> None:
    """CAMs of every pending id of --train_list with the 1x1 kernel `weight` (C, D, 1, 1)."""
    ctx = dist.init(args.device)
    source = make_source(args)
    ids = pending(resolve_list(source, args.train_list), args.cam_out_dir, ".npz", args, ctx)
    log.info("%s: %d images to do", desc, len(ids))
    model.to(ctx.device).eval()
    weight = weight.detach().to(ctx.device)
    loader = DataLoader(InferenceDataset(source, ids, skip_bad=args.skip_bad_images), batch_size=None,
                        num_workers=min(args.num_workers, 4))
    dtype = amp_dtype(args, ctx.device)
    for pack in tqdm(loader, desc=desc, disable=not ctx.is_main):
        if "bad" in pack:
            skip_bad_image(args, desc, pack["name"], pack["bad"])
            continue
        keys = torch.nonzero(pack["label"]).flatten()
        strided, high_res = multiscale_cam(model.features, pack["img"], weight, keys, args.cam_scales,
                                           device=ctx.device, amp_dtype=dtype)
        save_cam(os.path.join(args.cam_out_dir, f"{pack['name']}.npz"), keys.numpy(),
                 strided.cpu().numpy(), high_res.cpu().numpy())
    dist.barrier(ctx)


def run(args) -> None:
    source = make_source(args)
    model = CAMNet(source.num_classes, pretrained=None, arch=args.cam_network)
    load_cam_weights(model, args.cam_weights_name)
    write_cams(args, model, cam_weight(model.classifier.weight), "make_cam")
