"""Evaluation: the validation of AFA's three predictions (CAMs, propagated CAMs, segmentation), the
test's multi-scale flipped segmentation with an optional dense CRF in worker processes, and the
settings every results/*.json records."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from wavecam.data.datasets import SegmentationDataset, prepare_gt, split_ids
from wavecam.end_to_end.config import Config
from wavecam.end_to_end.data import eval_loader, make_source
from wavecam.end_to_end.model import grid_size
from wavecam.engine import runtime
from wavecam.engine.parallel import BackgroundPool
from wavecam.engine.results import run_settings
from wavecam.io import save_json, save_png
from wavecam.labels import afa
from wavecam.labels.crf import crf_inference_prob
from wavecam.metrics import ConfusionMatrix
from wavecam.models.e2e import WaveAFA

log = logging.getLogger("wavecam")


@torch.no_grad()
def validate(net: WaveAFA, loader: DataLoader, cfg: Config, ctx: runtime.Context, num_classes: int
             ) -> dict[str, ConfusionMatrix]:
    """Confusions over the images of `loader` (all ranks summed) of AFA's three predictions: `cam`,
    the multi-scale CAMs with a background score of `cam.bkg_score`; `aff`, those CAMs propagated by
    the affinity of the last stage (background score `cam.low_thre`); `seg`, the segmentation head."""
    cam, device = cfg.cam, ctx.device
    cms = {k: ConfusionMatrix(num_classes + 1) for k in ("cam", "aff", "seg")}
    was_training = net.training
    net.eval()
    for item in tqdm(loader, desc="validate", disable=not ctx.is_main, leave=False):
        images, labels, gt = item["img"].to(device), item["label"].to(device), item["gt"][0].numpy()
        with runtime.autocast(cfg.train.amp, device):
            out = net(images)
            cams = afa.multi_scale_cams(net.cams_and_affinity, images, cam.scales).cams  # (1, C, H, W)
        grid = grid_size(images.shape[2:])
        aff = afa.propagate_cams(F.interpolate(cams, size=grid, mode="bilinear", align_corners=False),
                                 out.attn_pred.float(), labels, cam.low_thre,
                                 afa.radius_mask(*grid, cam.radius, device))
        preds = {"cam": afa.cam_to_label(cams, labels, cam.bkg_score),
                 "aff": F.interpolate(aff, size=gt.shape, mode="bilinear", align_corners=False).argmax(1),
                 "seg": F.interpolate(out.seg.float(), size=gt.shape, mode="bilinear", align_corners=False).argmax(1)}
        for k, pred in preds.items():
            cms[k].update(pred[0].cpu().numpy(), gt)
    net.train(was_training)
    runtime.sum_confusions(list(cms.values()), ctx)
    return cms


def settings(cfg: Config, work_dir: str | os.PathLike, eval_set: str) -> dict:
    """What every results/*.json records about the run that produced it (as the multi-stage passes)."""
    data = cfg.dataset
    return run_settings(data.name, data.root, eval_set, work_dir, data.cache_dir, data.coco_split_images,
                        data.coco_crowd)


@torch.no_grad()
def segment(net: WaveAFA, image: torch.Tensor, scales: Sequence[float], flip: bool,
            resize_long: int | None) -> torch.Tensor:
    """Segmentation logits (C, H, W) of one normalised image (1, 3, H, W), as AFA's test: the image is
    first resized to a long side of `resize_long`; at each scale the logits (with `flip`, averaged with
    those of the mirror image) are resized to the first scale's output size; the scales are maxed and
    the result resized to H x W."""
    h, w = image.shape[2:]
    if resize_long:
        ratio = resize_long / max(h, w)
        image = F.interpolate(image, size=(int(h * ratio), int(w * ratio)), mode="bilinear", align_corners=False)
    best, size = None, None
    for s in scales:
        x = image if s == 1 else F.interpolate(image, scale_factor=s, mode="bilinear", align_corners=False)
        seg = net(torch.cat([x, x.flip(-1)]) if flip else x).seg.float()
        seg = (seg[:1] + seg[1:].flip(-1)) / 2 if flip else seg
        size = size or seg.shape[2:]
        seg = F.interpolate(seg, size=size, mode="bilinear", align_corners=False)
        best = seg if best is None else torch.maximum(best, seg)
    return F.interpolate(best, size=(h, w), mode="bilinear", align_corners=False)[0]


def run_test(net: WaveAFA, cfg: Config, ctx: runtime.Context, work_dir: str | os.PathLike,
             checkpoint: str | os.PathLike, iteration: int | None = None) -> dict | None:
    """Segment `test.eval_set` with the `test` settings, write `<work_dir>/test/<set>[_crf]/<id>.png`
    and, where the set has ground truth, `<work_dir>/results/test_<set>[_crf].json` (rank 0 returns it)."""
    test = cfg.test
    source = make_source(cfg)
    name = test.eval_set + ("_crf" if test.crf else "")
    out_dir = Path(work_dir) / "test" / name
    ids = runtime.shard(split_ids(source, test.eval_set), ctx)
    if test.evaluate:
        prepare_gt(source, ids)
    dataset = SegmentationDataset(source, ids, test.evaluate)
    cm = ConfusionMatrix(source.num_classes + 1)
    net.eval()
    with BackgroundPool(test.crf_workers if test.crf else 0, _crf_prediction) as crf_pool:
        for item in tqdm(eval_loader(dataset, cfg, ctx), desc=f"test {name}", disable=not ctx.is_main):
            with runtime.autocast(cfg.train.amp, ctx.device):
                logits = segment(net, item["img"].to(ctx.device), test.scales, test.flip, test.resize_long)
            gt = item["gt"][0].numpy() if test.evaluate else None
            path = out_dir / f"{item['name'][0]}.png"
            if test.crf:
                image = source.load_image(item["name"][0])
                finished = crf_pool.submit((image, logits.softmax(0).cpu().numpy(), path), gt)
            else:
                finished = [(_save_prediction(logits.argmax(0).cpu().numpy(), path), gt)]
            for pred, its_gt in finished:
                if its_gt is not None:
                    cm.update(pred, its_gt)
        for pred, its_gt in crf_pool.drain():
            if its_gt is not None:
                cm.update(pred, its_gt)
    if not test.evaluate:
        log.info("test: wrote %s (no evaluation: test.evaluate is false)", out_dir)
        return None
    runtime.sum_confusions([cm], ctx)
    if not ctx.is_main:
        return None
    result = {**cm.summary(), "checkpoint": os.path.abspath(checkpoint), "iteration": iteration,
              **{k: getattr(test, k) for k in ("scales", "flip", "resize_long", "crf")},
              "prediction_dir": os.path.abspath(out_dir), **settings(cfg, work_dir, test.eval_set)}
    save_json(Path(work_dir) / "results" / f"test_{name}.json", result)
    log.info("test %s: mIoU %.4f on %d images", name, result["miou"], result["n_images"])
    return result


def _save_prediction(pred: np.ndarray, path: Path) -> np.ndarray:
    pred = pred.astype(np.uint8)
    save_png(path, pred)
    return pred


def _crf_prediction(image: np.ndarray, probs: np.ndarray, path: Path) -> np.ndarray:
    return _save_prediction(crf_inference_prob(image, probs).argmax(0), path)
