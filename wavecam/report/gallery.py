"""The HTML gallery: a run's evaluation images ranked by the per-image mIoU of its final labels (IRN
pseudo labels, else CAM seeds), and about a third each of the best, the median and the worst shown
with their ground truth, CAM heat maps, seeds and pseudo labels. Written as gallery.html with its
pictures under gallery/, linked relatively, so the folder opens without a server. The only part of
the report that reads images, CAMs and labels: from the dataset root and the folders the eval
passes' JSON records."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import matplotlib
import numpy as np
from PIL import Image
from tqdm import tqdm

from wavecam.classes import IGNORE_INDEX, voc_palette
from wavecam.data import datasets
from wavecam.errors import WavecamError
from wavecam.io import atomic_path, load_cam, load_png, save_png
from wavecam.labels.cam import seeds
from wavecam.metrics import ConfusionMatrix, unsure_as_background
from wavecam.multi_stage.workspace import default_path
from wavecam.report.results import Run
from wavecam.report.tables import write_text

THUMB_SIDE = 240  # longest side of gallery pictures, in pixels
HEAT_ALPHA = 0.5

def open_source(settings: dict):
    """The dataset a run was evaluated on, as its results record it (data.datasets.open_source)."""
    dataset, root = settings.get("dataset"), settings.get("data_root")
    if not root or not Path(root).is_dir():
        raise WavecamError(f"the dataset root recorded in the results ({root}) is not a folder; the gallery "
                           "needs the images and ground truth the run was evaluated on")
    # The run's own COCO policies, so the gallery shows the ground truth it was scored against; results
    # that do not record them were scored with the stricter ones.
    return datasets.open_source("coco" if dataset == "coco" else "voc", root, settings.get("cache_dir"),
                                root_option="the recorded data_root",
                                coco_split_images=settings.get("coco_split_images", "annotated"),
                                coco_crowd=settings.get("coco_crowd", "ignore"))


def result_dir(run: Run, result: dict | None, key: str) -> Path:
    """The folder an eval pass read (the path flag `key`); the work space's default one when that
    path no longer exists (a moved work space)."""
    recorded = Path(result[key]) if result and result.get(key) else None
    return recorded if recorded and recorded.is_dir() else Path(default_path(run.work_space, key))


def image_miou(pred: np.ndarray, gt: np.ndarray, n_class: int) -> float:
    cm = ConfusionMatrix(n_class)
    cm.update(pred, gt)
    return cm.miou() if cm.mat.any() else math.nan


def check_size(path: Path, size: tuple[int, ...], gt: np.ndarray, data_root: str) -> None:
    if size != gt.shape:
        raise WavecamError(f"{path}: size {size} against ground truth of {gt.shape}; the dataset root {data_root} "
                           "is not the one this work space was made from")


def sem_seg_label(path: Path) -> np.ndarray:
    """A pseudo label as eval_sem_seg scores it: 'unsure' (255) counts as background."""
    return unsure_as_background(load_png(path))


@dataclass
class GalleryRun:
    run: Run
    source: datasets.Source
    cam_dir: Path
    sem_dir: Path | None  # None: rank by CAM seeds
    threshold: float | None  # None: the run has no eval_cam results, so no seeds are shown
    ids: list[str]


def gallery_run(run: Run) -> GalleryRun:
    source = open_source(run.settings)
    cam_dir = result_dir(run, run.settings, "cam_out_dir")
    sem_dir = result_dir(run, run.sem_seg, "sem_seg_out_dir")
    ids = [i for i in source.split(run.settings["eval_set"]) if (cam_dir / f"{i}.npz").is_file()]
    with_sem = [i for i in ids if (sem_dir / f"{i}.png").is_file()]
    threshold = run.cam["threshold"] if run.cam else None
    if with_sem:
        return GalleryRun(run, source, cam_dir, sem_dir, threshold, with_sem)
    if threshold is None or not ids:
        raise WavecamError(f"{run.work_space}: neither pseudo labels in {sem_dir} nor CAM files and eval_cam results "
                           f"for the {run.settings['eval_set']} images (CAMs looked for in {cam_dir}); the gallery "
                           "needs one of them")
    return GalleryRun(run, source, cam_dir, None, threshold, ids)


def checked_cam(g: GalleryRun, image_id: str, gt: np.ndarray) -> dict:
    path = g.cam_dir / f"{image_id}.npz"
    cam = load_cam(path)
    check_size(path, cam["high_res"].shape[1:], gt, g.run.settings["data_root"])
    return cam


def final_label(g: GalleryRun, image_id: str, gt: np.ndarray) -> np.ndarray:
    if g.sem_dir is None:
        return seeds(checked_cam(g, image_id, gt), g.threshold)
    path = g.sem_dir / f"{image_id}.png"
    label = sem_seg_label(path)
    check_size(path, label.shape, gt, g.run.settings["data_root"])
    return label


def image_score(g: GalleryRun, image_id: str) -> float:
    gt = g.source.load_gt(image_id)
    return image_miou(final_label(g, image_id, gt), gt, g.source.num_classes + 1)


def ranked(g: GalleryRun) -> list[tuple[str, float]]:
    """(id, per-image mIoU of the final labels), best first; images without scorable pixels dropped."""
    scores = [(i, image_score(g, i)) for i in tqdm(g.ids, desc=f"gallery {g.run.name}", leave=False)]
    return sorted((s for s in scores if not math.isnan(s[1])), key=lambda s: -s[1])


def pick(order: Sequence, n: int) -> list[tuple[object, str]]:
    """About a third each of the best, the median and the worst of `order` (best first); a
    remainder goes to best, then worst."""
    third, rest = divmod(n, 3)
    n_best, n_worst, n_median = third + (rest > 0), third + (rest > 1), third
    mid = max(0, (len(order) - n_median) // 2)
    groups = (("best", range(min(n_best, len(order)))),
              ("median", range(mid, min(mid + n_median, len(order)))),
              ("worst", range(max(0, len(order) - n_worst), len(order))))
    chosen: dict[int, str] = {}
    for group, idx in groups:
        for i in idx:
            chosen.setdefault(i, group)
    return [(order[i], chosen[i]) for i in sorted(chosen)]


def thumb_size(h: int, w: int) -> tuple[int, int]:
    scale = min(1.0, THUMB_SIDE / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    img = Image.fromarray(rgb).resize(thumb_size(*rgb.shape[:2]), Image.BILINEAR)
    with atomic_path(path) as tmp:
        img.save(tmp, format="JPEG", quality=90)


def save_label(path: Path, label: np.ndarray) -> None:
    img = Image.fromarray(label).resize(thumb_size(*label.shape), Image.NEAREST)
    save_png(path, np.asarray(img), palette=True)


def heat_overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
    return ((1 - HEAT_ALPHA) * image + HEAT_ALPHA * heat).astype(np.uint8)


def figure(src: str, caption: str, pixelated: bool = False) -> str:
    cls = ' class="label"' if pixelated else ""
    return f'<figure><img{cls} src="{quote(src)}" alt=""><figcaption>{html.escape(caption)}</figcaption></figure>'


def legend(labels: Sequence[np.ndarray], names: Sequence[str]) -> str:
    palette = voc_palette()
    present = sorted(set().union(*(np.unique(lab).tolist() for lab in labels)))
    name_of = {**dict(enumerate(names)), IGNORE_INDEX: "ignore (ground truth) / unsure (IRN)"}
    items = [f'<span><i style="background:rgb{tuple(int(c) for c in palette[k])}"></i>{html.escape(name_of[k])}</span>'
             for k in present]
    return '<div class="legend">' + "".join(items) + "</div>"


def gallery_row(g: GalleryRun, image_id: str, group: str, score: float, folder: Path, rel: str) -> str:
    """Write one image's pictures under `folder` (linked as `rel`) and return its HTML row."""
    source, n_class = g.source, g.source.num_classes + 1
    names = ["background", *source.class_names]
    image, gt = source.load_image(image_id), source.load_gt(image_id)
    cam = checked_cam(g, image_id, gt)
    figs, labels = [], [gt]

    def add(name: str, caption: str, write, data, pixelated: bool = False) -> None:
        write(folder / name, data)
        figs.append(figure(f"{rel}/{name}", caption, pixelated))

    add(f"{image_id}_image.jpg", image_id, save_rgb, image)
    add(f"{image_id}_gt.png", "ground truth", save_label, gt, True)
    for k, hr in zip(cam["keys"], cam["high_res"]):
        add(f"{image_id}_cam{k + 1}.jpg", f"CAM: {names[k + 1]}", save_rgb, heat_overlay(image, hr))
    if g.threshold is not None:
        s = seeds(cam, g.threshold)
        labels.append(s)
        add(f"{image_id}_seeds.png", f"CAM seeds (bg {g.threshold:.2f}): mIoU {100 * image_miou(s, gt, n_class):.1f}",
            save_label, s, True)
    if g.sem_dir is not None:
        irn = load_png(g.sem_dir / f"{image_id}.png")
        labels.append(irn)
        add(f"{image_id}_irn.png", f"IRN pseudo label: mIoU {100 * score:.1f}", save_label, irn, True)
    title = f"{image_id} · {group} · mIoU {100 * score:.1f}"
    return (f'<div class="row"><h3>{html.escape(title)}</h3>{legend(labels, names)}'
            f'<div class="figs">{"".join(figs)}</div></div>')


CSS = """
body { font-family: sans-serif; margin: 16px; color: #222; }
.row { border-top: 1px solid #ccc; padding: 6px 0; }
.row h3 { margin: 4px 0; font-size: 15px; }
.figs { display: flex; flex-wrap: wrap; gap: 6px; }
figure { margin: 0; display: table; }
figure img { height: 150px; display: block; }
img.label { image-rendering: pixelated; }
/* a table caption wraps at its image's width instead of widening the figure */
figcaption { display: table-caption; caption-side: bottom; font-size: 12px; text-align: center; }
.legend { font-size: 12px; margin-bottom: 4px; }
.legend span { margin-right: 10px; }
.legend i { display: inline-block; width: 11px; height: 11px; margin-right: 3px; vertical-align: middle;
            border: 1px solid #888; }
"""


def write_gallery(runs: Sequence[Run], out: Path, n: int) -> None:
    sections = []
    for index, run in enumerate(runs):
        g = gallery_run(run)
        rel = f"gallery/{index}-{re.sub(r'[^A-Za-z0-9._-]+', '_', run.name)}"
        ranks = ranked(g)
        ranked_by = "IRN pseudo labels" if g.sem_dir is not None else f"CAM seeds at bg {g.threshold:.2f}"
        rows = [gallery_row(g, image_id, group, score, out / rel, rel)
                for (image_id, score), group in pick(ranks, n)]
        sections.append(f"<h2>{html.escape(run.name)}</h2><p>{len(ranks)} {html.escape(run.settings['eval_set'])} "
                        f"images ranked by the per-image mIoU of the {ranked_by}; best, median and worst shown. "
                        f"Labels in the VOC palette.</p>{''.join(rows)}")
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>wavecam gallery</title>'
            f"<style>{CSS}</style></head><body><h1>wavecam gallery</h1>{''.join(sections)}</body></html>\n")
    write_text(out / "gallery.html", page)
