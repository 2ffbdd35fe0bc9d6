"""make_sem_seg: IRN's boundary map (image + flip) -> affinities within radius 5 -> random walk
of the stride-4 CAMs -> sem_seg/<id>.png with background at --sem_seg_bg_thres.

On a GPU one process takes the images in turn. On a CPU the network's forward pass and the walk
of an image are both CPU-bound and single-image, so the images are spread over --num_workers
processes (at most one per core), each with its share of the cores' threads and its own copy of
the network (with PyTorch and one image's activations, about 1.3 GB per process).

With --sem_seg_eval_sweep it also keeps each image's walked scores (sem_seg_score/<id>.npz), so that
eval_sem_seg can label them at every background threshold of the sweep without walking again.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from wavecam.data.datasets import InferenceDataset, split_ids
from wavecam.engine import runtime
from wavecam.engine.parallel import map_images
from wavecam.engine.provenance import file_identity, folder_identity
from wavecam.io import save_npz, save_png
from wavecam.labels.randomwalk import propagate, rw_to_label
from wavecam.models.irn import EdgeDisplacement
from wavecam.multi_stage.pass_io import (
    claim_outputs,
    data_identity,
    loader_options,
    make_source,
    pick,
    read_cam,
    skip_bad_image,
)
from wavecam.multi_stage.workspace import CAMS, SEM_SEG, SEM_SEG_SCORES

log = logging.getLogger("wavecam")


@torch.no_grad()
def run(args) -> None:
    ctx = runtime.init(args.device)
    source = make_source(args)
    ids = split_ids(source, args.infer_list)
    # The walked scores do not depend on the background threshold; the labels do.
    scores_maker = {"pass": "make_sem_seg", **data_identity(args), "cams": folder_identity(CAMS.folder(args)),
                    "irn_weights": file_identity(args.irn_weights_name),
                    **pick(args, "irn_network", "irn_crop_size", "irn_pad_to_crop", "beta", "exp_times")}
    todo = set(claim_outputs(ids, SEM_SEG.folder(args), SEM_SEG.suffix,
                             {**scores_maker, **pick(args, "sem_seg_bg_thres")}, args, ctx, "make_sem_seg"))
    if args.sem_seg_eval_sweep:  # labels written before the sweep was asked for get their scores now
        todo |= set(claim_outputs(ids, SEM_SEG_SCORES.folder(args), SEM_SEG_SCORES.suffix, scores_maker, args, ctx,
                                  "make_sem_seg"))
    ids = [i for i in ids if i in todo]
    log.info("make_sem_seg: %d images to do", len(ids))
    cores = max(1, _cores() // ctx.world_size)  # torchrun's CPU ranks share the machine
    workers = min(args.num_workers, cores)
    if ctx.device.type == "cpu" and workers > 1 and len(ids) > 1:
        map_images(functools.partial(_label_in_worker, args=args, source=source), ids, workers, "make_sem_seg",
                   show=ctx.is_main, threads=max(1, cores // workers))
    else:
        model = _network(args.irn_weights_name, args.irn_crop_size, args.irn_network, args.irn_pad_to_crop,
                         runtime.memory_format(args.channels_last), ctx.device)
        loader = DataLoader(InferenceDataset(source, ids, with_labels=False, skip_bad=args.skip_bad_images),
                            batch_size=None, **loader_options(args, ctx, workers=min(args.num_workers, 4)))
        for item in tqdm(loader, desc="make_sem_seg", disable=not ctx.is_main):
            label_image(model, item, args, ctx.device)
    runtime.barrier(ctx)


def label_image(model: EdgeDisplacement, item: dict, args, device: torch.device) -> None:
    """One item of InferenceDataset (image (3, H, W), its name and size) -> sem_seg/<name>.png."""
    image_id = item["name"]
    if "bad" in item:
        skip_bad_image(args, "make_sem_seg", image_id, item["bad"])
        return
    cam = read_cam(args, image_id)
    strided = torch.from_numpy(cam["cam"]).to(device)
    if len(cam["keys"]):
        edge, _ = model(torch.as_tensor(item["img"]).to(device))
        rw = propagate(strided, edge, beta=args.beta, exp_times=args.exp_times, radius=5)
    else:  # an image without classes (COCO has some): nothing to walk, all background as in ReCAM
        rw = strided
    label = rw_to_label(rw, cam["keys"], args.sem_seg_bg_thres, item["size"])
    if args.sem_seg_eval_sweep:
        save_npz(SEM_SEG_SCORES.path(args, image_id), keys=np.asarray(cam["keys"], dtype=np.int64),
                 rw=rw.cpu().numpy().astype(np.float32), size=np.asarray(item["size"], dtype=np.int64))
    save_png(SEM_SEG.path(args, image_id), label.astype("uint8"))


@torch.no_grad()
def _label_in_worker(image_id: str, args, source) -> None:
    cpu = torch.device("cpu")
    model = _worker_network(args.irn_weights_name, args.irn_crop_size, args.irn_network, args.irn_pad_to_crop,
                            runtime.memory_format(args.channels_last), cpu)
    item = InferenceDataset(source, [image_id], with_labels=False, skip_bad=args.skip_bad_images)[0]
    label_image(model, item, args, cpu)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _network(weights: str, crop_size: int, arch: str, pad_to_crop: bool, layout: torch.memory_format,
             device: torch.device) -> EdgeDisplacement:
    model = EdgeDisplacement.from_checkpoint(weights, crop_size=crop_size, arch=arch, pad_to_crop=pad_to_crop)
    return model.to(device, memory_format=layout)


# A worker process loads the network once, for all of its images.
_worker_network = functools.cache(_network)
