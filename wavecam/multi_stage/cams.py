"""Writing CAMs: what make_cam, make_recam and make_wavecam share once they have a network and its
1x1 CAM kernel. Multi-scale, flipped CAMs of every pending image go to cam_mask/<id>.npz.

Images of one size go through the network together (--cam_infer_batch): flips are always batched
with their image, scales cannot be (their shapes differ), so same-size images are what fills a GPU.
"""

from __future__ import annotations

import logging

import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from wavecam.data.datasets import InferenceDataset, split_ids
from wavecam.engine import runtime
from wavecam.io import save_cam
from wavecam.labels.cam import multiscale_cam_batch
from wavecam.models import CAMNet
from wavecam.multi_stage.pass_io import (
    claim_outputs,
    data_identity,
    loader_options,
    make_source,
    pick,
    skip_bad_image,
)
from wavecam.multi_stage.workspace import CAMS

log = logging.getLogger("wavecam")


def infer_batch(args, ctx: runtime.Context) -> int:
    """--cam_infer_batch, 0 meaning 8 on CUDA and 1 on CPU (where batching gains little)."""
    if args.cam_infer_batch > 0:
        return args.cam_infer_batch
    return 8 if ctx.device.type == "cuda" else 1


def same_size_batches(source, ids: list[str], batch: int) -> list[list[int]]:
    """Indices into `ids` in groups of at most `batch` images of one size, read from the file
    headers. An image whose header cannot be read is a group of its own: loading it reports why."""
    if batch == 1:  # no header to read
        return [[i] for i in range(len(ids))]
    by_size: dict[object, list[int]] = {}
    for i, image_id in enumerate(ids):
        try:
            with Image.open(source.image_path(image_id)) as im:
                size = im.size
        except (OSError, ValueError):
            size = ("unreadable", i)
        by_size.setdefault(size, []).append(i)
    return [group[k:k + batch] for group in by_size.values() for k in range(0, len(group), batch)]


def write_cams(args, model: CAMNet, weight: torch.Tensor, desc: str, weights: dict) -> None:
    """CAMs of every pending id of --train_list with the 1x1 kernel `weight` (C, D, 1, 1); `weights`
    identifies the files the network and kernel come from (engine.provenance), so that cam_mask/ made
    by another pass or from other weights is redone."""
    ctx = runtime.init(args.device)
    source = make_source(args)
    maker = {"pass": desc, **data_identity(args), **weights,
             **pick(args, "cam_network", "cam_scales", "cam_resample", "amp")}
    ids = claim_outputs(split_ids(source, args.train_list), CAMS.folder(args), CAMS.suffix, maker, args, ctx, desc)
    log.info("%s: %d images to do", desc, len(ids))
    runtime.place(model, ctx, args.channels_last).eval()
    weight = weight.detach().to(ctx.device)
    batches = same_size_batches(source, ids, infer_batch(args, ctx))
    scales = args.cam_scales if args.cam_resample == "pil" else None
    dataset = InferenceDataset(source, ids, skip_bad=args.skip_bad_images, scales=scales)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=list,
                        **loader_options(args, ctx, workers=min(args.num_workers, 4)))
    dtype = runtime.amp_dtype(args.amp, ctx.device)
    with tqdm(total=len(ids), desc=desc, disable=not ctx.is_main) as bar:
        for items in loader:
            bar.update(len(items))
            for item in items:
                if "bad" in item:
                    skip_bad_image(args, desc, item["name"], item["bad"])
            items = [p for p in items if "bad" not in p]
            if items:
                keys = [torch.nonzero(p["label"]).flatten() for p in items]
                images = torch.stack([p["img"] for p in items]).to(ctx.device, non_blocking=True)
                scaled = None if scales is None else [torch.stack(level) for level in
                                                      zip(*(p["scaled"] for p in items), strict=True)]
                cams = multiscale_cam_batch(model.features, images, weight, keys, args.cam_scales,
                                            memory_format=torch.channels_last if args.channels_last else None,
                                            amp_dtype=dtype, scaled=scaled)
                for p, k, (strided, high_res) in zip(items, keys, cams, strict=True):
                    save_cam(CAMS.path(args, p["name"]), k.cpu().numpy(),
                             strided.cpu().numpy(), high_res.cpu().numpy())
    runtime.barrier(ctx)
