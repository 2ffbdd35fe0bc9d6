"""make_seg (stage 3): the trained segmenter's predictions for --seg_eval_set, and on VOC for the
test images of --voc12_test_root in the evaluation server's layout.

As deeplab-pytorch's test: the whole image at its size, the network's (multi-scale, max-fused)
logits resized bilinearly to it, softmax; with --seg_crf its dense CRF (10 iterations; its Gaussian
and bilateral settings) on those probabilities. Writes <seg_out_dir>/<set>/<id>.png and
<seg_out_dir>/<set>_crf/<id>.png (8-bit label maps), for test also
results/VOC2012/Segmentation/comp6_test_cls/<id>.png (VOC palette, the CRF ones with --seg_crf).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wavecam.data.datasets import open_source, split_ids
from wavecam.engine.parallel import BackgroundPool
from wavecam.engine.provenance import file_identity
from wavecam.engine.runtime import autocast, barrier, init, place
from wavecam.io import save_png
from wavecam.labels.crf import crf_inference_deeplab
from wavecam.models.deeplab import SegNetwork, build_seg_network, load_seg_weights
from wavecam.multi_stage.pass_io import claim_outputs, load_image_or_skip, make_source, pick
from wavecam.multi_stage.workspace import seg_predictions, voc_server_dir

log = logging.getLogger("wavecam")


@torch.no_grad()
def probabilities(net: SegNetwork, image: np.ndarray, amp: bool) -> torch.Tensor:
    """Class probabilities (C, H, W) of one (H, W, 3) uint8 image."""
    device = next(net.parameters()).device
    x = net.preprocess(image)[None].to(device)
    with autocast(amp, device):
        logits = net(x)
    logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].softmax(0).cpu()


def crf_settings(args) -> dict:
    """The CRF of --seg_crf_iters, --seg_crf_pos and --seg_crf_bi (deeplab-pytorch's by default)."""
    (pos_w, pos_xy), (bi_w, bi_xy, bi_rgb) = args.seg_crf_pos, args.seg_crf_bi
    return {"t": args.seg_crf_iters, "pos_w": pos_w, "pos_xy_std": pos_xy, "bi_w": bi_w, "bi_xy_std": bi_xy,
            "bi_rgb_std": bi_rgb}


def refine(image: np.ndarray, probs: np.ndarray, crf_path: str, server_path: str | None,
           reference_image: bool, settings: dict) -> None:
    """The dense CRF of one image's probabilities, saved (and in the server's layout, with colours)."""
    pred = crf_inference_deeplab(image, probs, reference_image, settings).argmax(0).astype(np.uint8)
    save_png(crf_path, pred)
    if server_path:
        save_png(server_path, pred, palette=True)


class PredictionFolders(NamedTuple):
    """Where one set's predictions go."""

    plain: str  # the network's argmax
    crf: str | None  # its dense CRF (with --seg_crf)
    server: str | None  # the evaluation server's layout, with colours (the CRF ones with --seg_crf)


def predict(net: SegNetwork, source, ids: list[str], folders: PredictionFolders, args) -> None:
    """Write each image's prediction into `folders`, the CRFs in --num_workers processes beside the
    network."""
    crf_dir, server = folders.crf, folders.server
    with BackgroundPool(args.num_workers if args.seg_crf else 0, refine) as crf:
        for image_id in tqdm(ids, desc="make_seg", disable=not ids):
            image = load_image_or_skip(source, args, "make_seg", image_id)
            if image is None:
                continue
            probs = probabilities(net, image, args.amp)
            pred = probs.argmax(0).numpy().astype(np.uint8)
            save_png(os.path.join(folders.plain, f"{image_id}.png"), pred)
            server_path = os.path.join(server, f"{image_id}.png") if server else None
            if crf_dir is None:
                if server_path:
                    save_png(server_path, pred, palette=True)
                continue
            crf.submit((image, probs.numpy(), os.path.join(crf_dir, f"{image_id}.png"), server_path,
                        args.seg_crf_image == "reference", crf_settings(args)))
        crf.drain()


def run(args) -> None:
    ctx = init(args.device)
    source = make_source(args)
    net = build_seg_network(args.seg_network, source.num_classes + 1, scales=args.seg_msc_scales,
                            n_blocks=args.seg_n_blocks, block=args.seg_block)
    load_seg_weights(net, args.seg_weights_name)
    place(net, ctx, args.channels_last).eval()
    sets = [(args.seg_eval_set, source, None)]
    if getattr(args, "voc12_test_root", None):
        test_images = open_source("voc", args.voc12_test_root, args.cache_dir, root_option="--voc12_test_root")
        sets.append(("test", test_images, str(voc_server_dir(args.work_space))))
    maker = {"pass": "make_seg", "seg_weights": file_identity(args.seg_weights_name),
             **pick(args, "seg_network", "seg_n_blocks", "seg_block", "seg_msc_scales", "amp")}
    crf_maker = {**maker, "crf": crf_settings(args), **pick(args, "seg_crf_image")}
    for name, images, server in sets:
        of_images = {"images": str(Path(images.root).resolve())}
        folders = PredictionFolders(seg_predictions(args, name, crf=False),
                                    seg_predictions(args, name, crf=True) if args.seg_crf else None, server)
        makers = (maker, crf_maker, crf_maker if args.seg_crf else maker)  # of plain, crf, server
        claims = [(folder, {**folder_maker, **of_images}) for folder, folder_maker in zip(folders, makers) if folder]
        all_ids = split_ids(images, name)
        todo = set()
        for folder, folder_maker in claims:
            todo |= set(claim_outputs(all_ids, folder, ".png", folder_maker, args, ctx, "make_seg"))
        ids = [i for i in all_ids if i in todo]
        log.info("make_seg: %d %s images to predict into %s", len(ids), name, ", ".join(f for f, _ in claims))
        predict(net, images, ids, folders, args)
    barrier(ctx)
