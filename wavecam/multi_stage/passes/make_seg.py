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

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wavecam.data.datasets import split_ids
from wavecam.data.voc import VOC12
from wavecam.engine.parallel import BackgroundPool
from wavecam.engine.provenance import file_identity
from wavecam.engine.runtime import autocast, barrier, init, place
from wavecam.errors import DatasetRootError
from wavecam.io import save_png
from wavecam.labels.crf import crf_inference_deeplab
from wavecam.models.deeplab import SegNetwork, build_seg_network
from wavecam.multi_stage.common import claim_outputs, load_image_or_skip, make_source, pick
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


def predict(net: SegNetwork, source, ids: list[str], folders: list[str], args) -> None:
    """Write each image's prediction into `folders`: without CRF, with CRF (with --seg_crf), the
    server's layout (where given), the CRFs in --num_workers processes beside the network."""
    crf_dir = folders[1] if args.seg_crf else None
    server = folders[-1] if len(folders) > 1 + args.seg_crf else None
    with BackgroundPool(args.num_workers if args.seg_crf else 0, refine) as crf:
        for image_id in tqdm(ids, desc="make_seg", disable=not ids):
            image = load_image_or_skip(source, args, "make_seg", image_id)
            if image is None:
                continue
            probs = probabilities(net, image, args.amp)
            pred = probs.argmax(0).numpy().astype(np.uint8)
            save_png(os.path.join(folders[0], f"{image_id}.png"), pred)
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
    net = build_seg_network(args.seg_network, source.num_classes + 1, pretrained=args.seg_weights_name,
                            scales=args.seg_msc_scales, n_blocks=args.seg_n_blocks, block=args.seg_block)
    place(net, ctx, args.channels_last).eval()
    sets = [(args.seg_eval_set, source, [])]
    if getattr(args, "voc12_test_root", None):
        try:
            test_images = VOC12(args.voc12_test_root, args.cache_dir)
        except DatasetRootError as e:
            raise DatasetRootError(f"--voc12_test_root: {e}") from None
        sets.append(("test", test_images, [str(voc_server_dir(args.work_space))]))
    maker = {"pass": "make_seg", "seg_weights": file_identity(args.seg_weights_name),
             **pick(args, "seg_network", "seg_n_blocks", "seg_block", "seg_msc_scales", "amp")}
    crf_maker = {**maker, "crf": crf_settings(args), **pick(args, "seg_crf_image")}
    for name, images, extra in sets:
        of_images = {"images": str(Path(images.root).resolve())}
        folders = [(seg_predictions(args, name, crf=False), {**maker, **of_images})]
        if args.seg_crf:
            folders.append((seg_predictions(args, name, crf=True), {**crf_maker, **of_images}))
        folders += [(folder, {**(crf_maker if args.seg_crf else maker), **of_images}) for folder in extra]
        all_ids = split_ids(images, name)
        todo = set()
        for folder, folder_maker in folders:
            todo |= set(claim_outputs(all_ids, folder, ".png", folder_maker, args, ctx, "make_seg"))
        ids = [i for i in all_ids if i in todo]
        log.info("make_seg: %d %s images to predict into %s", len(ids), name, ", ".join(f for f, _ in folders))
        predict(net, images, ids, [f for f, _ in folders], args)
    barrier(ctx)
