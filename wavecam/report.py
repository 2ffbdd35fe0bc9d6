"""A report over multi-stage work spaces: the paper's results table, the threshold sweep plot and an
image gallery.

    python -m wavecam.report WS [WS ...] --out DIR [--gallery N] [--names a b ...]

writes DIR/results.md and DIR/results.csv (one row per work space, from its results/*.json: CAM,
ReCAM and WaveCAM work spaces side by side give the paper's baseline rows), DIR/per_class_iou.csv,
DIR/miou_vs_threshold.png and, with --gallery N, DIR/gallery.html with its pictures under
DIR/gallery/. Every number comes from the eval passes' JSON files; only the gallery reads images,
CAMs and labels, from the dataset root and folders those files record. The final segmentation's
column (stage 3, results/eval_seg.json) appears once a work space has that file.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import matplotlib
import numpy as np
from PIL import Image
from tqdm import tqdm

from wavecam.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette
from wavecam.data.coco import COCO2014, COCO_CLASSES
from wavecam.data.voc import VOC12
from wavecam.engine.cli import run_cli
from wavecam.errors import BadFileError, WavecamError
from wavecam.io import atomic_path, load_cam, load_json, load_png, save_png
from wavecam.labels.cam import seeds
from wavecam.metrics import ConfusionMatrix
from wavecam.multi_stage.workspace import default_path, results_path

matplotlib.use("Agg")  # files only; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402

THUMB_SIDE = 240  # longest side of gallery pictures, in pixels
HEAT_ALPHA = 0.5

FG_NOTE = (
    "Foreground precision / recall: the mean over the foreground classes present in the ground truth of "
    "the per-class precision TP/(TP+FP) and recall TP/(TP+FN) (a present class never predicted counts as "
    "precision 0). It is a class-balanced mean, not a binary foreground-vs-background figure."
)


@dataclass
class Run:
    name: str
    work_space: Path
    cam: dict | None  # results/eval_cam.json
    sem_seg: dict | None  # results/eval_sem_seg.json
    seg: dict | None = None  # results/eval_seg.json: the final segmentation (stage 3)

    @property
    def settings(self) -> dict:
        """Dataset, data root and evaluation set, which every eval pass records."""
        return self.cam or self.sem_seg or self.seg


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _score(v) -> bool:
    """An mIoU: a fraction, or NaN where the pass scored no pixel (json writes nanmean's NaN as is)."""
    return _number(v) and (0 <= v <= 1 or math.isnan(v))


def _per_class(v) -> bool:
    """A per-class list of fractions, null for a class absent from both prediction and ground truth."""
    return isinstance(v, list) and all(x is None or (_number(x) and 0 <= x <= 1) for x in v)


def _sweep(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, dict) and _number(s.get("threshold")) and _score(s.get("miou"))
                                       for s in v)


RESULT_KEYS = ("miou", "iou", "n_images")
# key -> (test, what it must be) for every value the report renders: one that is not what the eval
# pass writes would otherwise end as a traceback deep in the formatting, or as a plausible number.
# Keys beyond RESULT_KEYS may be absent or null (that pass does not record them).
RESULT_VALUES = {
    "miou": (_score, "a number in 0..1"),
    "iou": (_per_class, "a list of numbers in 0..1 or null"),
    "n_images": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "precision": (_per_class, "a list of numbers in 0..1 or null"),
    "recall": (_per_class, "a list of numbers in 0..1 or null"),
    "best_miou": (_score, "a number in 0..1"),
    "threshold": (_number, "a number"),
    "best_threshold": (_number, "a number"),
    "sem_seg_bg_thres": (_number, "a number"),
    "sweep": (_sweep, "a list of {threshold, miou} objects"),
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "eval_set": (lambda v: isinstance(v, str), "a string"),
}
JSON_TYPES = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def result_problems(result) -> list[str]:
    """What keeps `result` from being an eval pass's results; empty when it is one."""
    expected = f"expected a JSON object with {', '.join(RESULT_KEYS)}"
    if not isinstance(result, dict):
        return [f"{expected}, found a JSON {JSON_TYPES.get(type(result), type(result).__name__)}"]
    missing = [k for k in RESULT_KEYS if k not in result]
    problems = [f"{expected}, found one without {', '.join(missing)}"] if missing else []
    for key, (test, what) in RESULT_VALUES.items():
        value = result.get(key)
        if key in result and (value is not None or key in RESULT_KEYS) and not test(value):
            shown = json.dumps(value)
            problems.append(f"{key} is {shown if len(shown) <= 40 else shown[:37] + '...'}, expected {what}")
    return problems


def load_result(work_space: Path, stage: str) -> dict | None:
    """results/<stage>.json of a work space, checked; None where the pass has not run."""
    path = results_path(work_space, stage)
    if not path.is_file():
        return None
    result = load_json(path)
    problems = result_problems(result)
    if problems:
        raise BadFileError(f"{path}: not a results file of {stage}: {'; '.join(problems)}; re-run the eval pass that "
                           f"writes it (--{stage}_pass True on {work_space}) or leave this work space out")
    return result


def load_run(work_space: str | Path, name: str) -> Run:
    ws = Path(work_space)
    if not ws.is_dir():
        raise WavecamError(f"work space {ws} not found")
    found = {stage: load_result(ws, stage) for stage in ("eval_cam", "eval_sem_seg", "eval_seg")}
    if not any(found.values()):
        raise WavecamError(f"{ws}: no results/eval_cam.json, results/eval_sem_seg.json or results/eval_seg.json; "
                           "run --eval_cam_pass True (and --eval_sem_seg_pass True) on it first")
    return Run(name, ws, found["eval_cam"], found["eval_sem_seg"], found["eval_seg"])


def load_runs(work_spaces: Sequence[str | Path], names: Sequence[str] | None = None) -> list[Run]:
    if names is None:
        names = [Path(ws).resolve().name for ws in work_spaces]
    if len(names) != len(work_spaces):
        raise WavecamError(f"{len(names)} --names for {len(work_spaces)} work spaces")
    if len(set(names)) != len(names):
        raise WavecamError(f"run names must differ ({', '.join(names)}); give --names")
    return [load_run(ws, name) for ws, name in zip(work_spaces, names)]


# --- numbers -----------------------------------------------------------------------------------

def fg_precision_recall(result: dict) -> tuple[float, float]:
    """Class-balanced foreground precision and recall (see FG_NOTE); recall is null exactly for the
    classes absent from the ground truth, precision for those never predicted. NaN for results that
    record neither."""
    precision, recall = result.get("precision") or [], result.get("recall") or []
    pairs = [(p or 0.0, r) for p, r in zip(precision[1:], recall[1:]) if r is not None]
    if not pairs:
        return math.nan, math.nan
    p, r = np.array(pairs).T
    return float(p.mean()), float(r.mean())


# CSV column -> (stage, key in that stage's JSON)
SUMMARY_FIELDS = {
    "seeds_miou": ("cam", "miou"), "seeds_threshold": ("cam", "threshold"),
    "best_miou": ("cam", "best_miou"), "best_threshold": ("cam", "best_threshold"),
    "irn_miou": ("sem_seg", "miou"), "irn_bg_threshold": ("sem_seg", "sem_seg_bg_thres"),
    "seg_miou": ("seg", "miou"),
    "seeds_n_images": ("cam", "n_images"), "irn_n_images": ("sem_seg", "n_images"), "seg_n_images": ("seg", "n_images"),
}


def summary_row(run: Run) -> dict:
    """One CSV row: fractions 0..1 exactly as in the JSON, empty where a pass has no results."""
    row = {"run": run.name}
    for column, (stage, key) in SUMMARY_FIELDS.items():
        result = getattr(run, stage)
        row[column] = result.get(key) if result else None
    for prefix, result in (("seeds", run.cam), ("irn", run.sem_seg)):
        p, r = fg_precision_recall(result) if result else (None, None)
        row |= {f"{prefix}_fg_precision": p, f"{prefix}_fg_recall": r}
    row |= {"eval_set": run.settings.get("eval_set"), "work_space": str(run.work_space.resolve())}
    return {k: "" if v is None else v for k, v in row.items()}


def class_names(dataset: str | None, n_class: int) -> list[str]:
    names = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}.get(dataset or "", ())
    return ["background", *names] if len(names) + 1 == n_class else [f"class {i}" for i in range(n_class)]


def stages(run: Run) -> tuple[tuple[str, dict | None], ...]:
    """(label, results) of each stage a run may have: seeds, IRN pseudo labels, final segmentation."""
    return ("seeds", run.cam), ("irn", run.sem_seg), ("seg", run.seg)


def per_class_rows(runs: Sequence[Run]) -> list[dict]:
    """Long format: one row per run, stage and class."""
    rows = []
    for run in runs:
        for stage, result in stages(run):
            if result:
                names = class_names(result.get("dataset"), len(result["iou"]))
                rows += [{"run": run.name, "stage": stage, "class": c, "iou": "" if v is None else v}
                         for c, v in zip(names, result["iou"])]
    return rows


# --- markdown and CSV ----------------------------------------------------------------------------

def pct(v) -> str:
    return "-" if v in ("", None) or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def thr(v) -> str:
    return "-" if v in ("", None) else f"{v:.2f}"


def images(row: dict) -> str:
    counts = [str(row[k]) for k in ("seeds_n_images", "irn_n_images", "seg_n_images") if row[k] != ""]
    return " / ".join(dict.fromkeys(counts))


MAIN_COLUMNS = (
    ("run", lambda r: r["run"]),
    ("seeds mIoU", lambda r: pct(r["seeds_miou"])),
    ("bg thr", lambda r: thr(r["seeds_threshold"])),
    ("best sweep mIoU", lambda r: pct(r["best_miou"])),
    ("best thr", lambda r: thr(r["best_threshold"])),
    ("IRN mIoU", lambda r: pct(r["irn_miou"])),
    ("IRN bg thr", lambda r: thr(r["irn_bg_threshold"])),
    ("seg mIoU", lambda r: pct(r["seg_miou"])),
    ("seeds fg P", lambda r: pct(r["seeds_fg_precision"])),
    ("seeds fg R", lambda r: pct(r["seeds_fg_recall"])),
    ("IRN fg P", lambda r: pct(r["irn_fg_precision"])),
    ("IRN fg R", lambda r: pct(r["irn_fg_recall"])),
    ("images", images),
)


def has_seg(rows: Sequence[dict]) -> bool:
    """Whether a work space has results/eval_seg.json: until one does, the table has no seg column."""
    return any(r["seg_miou"] != "" for r in rows)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def appendix(runs: Sequence[Run]) -> list[str]:
    """Per-class IoU with classes as rows and one column per run and stage; runs whose class lists
    differ (VOC next to COCO) get a table each."""
    columns: dict[tuple[str, ...], list[tuple[str, dict]]] = {}
    for run in runs:
        for label, result in stages(run):
            if result:
                label = {"irn": "IRN"}.get(label, label)
                names = tuple(class_names(result.get("dataset"), len(result["iou"])))
                columns.setdefault(names, []).append((f"{run.name} {label}", result))
    lines = ["## Appendix: per-class IoU (%)", ""]
    for names, cols in columns.items():
        rows = [[name, *(pct(r["iou"][i]) for _, r in cols)] for i, name in enumerate(names)]
        rows.append(["**mIoU**", *(pct(r["miou"]) for _, r in cols)])
        lines += [*md_table(["class", *(c for c, _ in cols)], rows), ""]
    return lines


def markdown(runs: Sequence[Run], rows: Sequence[dict]) -> str:
    sets = sorted({f"{result.get('dataset', '?')} {result.get('eval_set', '?')}"
                   for r in runs for _, result in stages(r) if result})
    columns = [c for c in MAIN_COLUMNS if has_seg(rows) or c[0] != "seg mIoU"]
    seg = "; seg: the final segmentation (eval_seg)" if has_seg(rows) else ""
    lines = ["# Results", "",
             f"mIoU and foreground precision / recall in %, evaluated on: {', '.join(sets)}. "
             "Seeds: each run's CAMs (CAM, ReCAM or WaveCAM) cut at the background threshold of eval_cam; best "
             f"sweep: the best threshold of its sweep; IRN: eval_sem_seg's pseudo labels{seg}. '-': the pass has "
             "no results.", "",
             *md_table([c for c, _ in columns], [[f(r) for _, f in columns] for r in rows]), "",
             FG_NOTE, "", *appendix(runs)]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


# --- plot ------------------------------------------------------------------------------------------

def plot_sweeps(runs: Sequence[Run], path: Path) -> bool:
    """mIoU against the background threshold for every run with an eval_cam sweep; False if none has one."""
    swept = [r for r in runs if r.cam and r.cam.get("sweep")]
    if not swept:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for run in swept:
        pts = sorted((s["threshold"], 100 * s["miou"]) for s in run.cam["sweep"])
        (line,) = ax.plot(*zip(*pts), marker="o", ms=3, label=run.name)
        best = max(pts, key=lambda p: p[1])
        ax.plot(*best, marker="*", ms=12, color=line.get_color(), ls="none")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("CAM seeds mIoU (%)")
    ax.set_title("mIoU vs background threshold (star: best)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


# --- gallery -----------------------------------------------------------------------------------------

def open_source(settings: dict):
    dataset, root = settings.get("dataset"), settings.get("data_root")
    if not root or not Path(root).is_dir():
        raise WavecamError(f"the dataset root recorded in the results ({root}) is not a folder; the gallery "
                           "needs the images and ground truth the run was evaluated on")
    if dataset != "coco":
        return VOC12(root, settings.get("cache_dir"))
    # The run's own policies, so the gallery shows the ground truth it was scored against; results
    # written before they were recorded had the stricter ones.
    return COCO2014(root, settings.get("cache_dir"), split_images=settings.get("coco_split_images", "annotated"),
                    crowd=settings.get("coco_crowd", "ignore"))


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
    label = load_png(path).copy()
    label[label == IGNORE_INDEX] = 0
    return label


@dataclass
class GalleryRun:
    run: Run
    source: VOC12 | COCO2014
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


# --- entry points ------------------------------------------------------------------------------------

def check_out(out: Path) -> None:
    """--out must be a folder or a path where one can be made; checked before anything is read or
    written, so that a wrong --out costs no work and leaves no half-written report."""
    if out.exists() and not out.is_dir():
        raise WavecamError(f"--out {out}: is a file, not a folder; choose another --out (a new or existing folder)")
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise WavecamError(f"--out {out}: {blocker} is a file, so no folder can be made under it; choose another "
                           "--out (a new or existing folder)")


def report(work_spaces: Sequence[str | Path], out: str | Path, gallery: int = 0,
           names: Sequence[str] | None = None) -> list[Path]:
    """Write the report of `work_spaces` under `out`; return the files written at its top level."""
    if not work_spaces:
        raise WavecamError("give at least one work space")
    out = Path(out)
    check_out(out)
    runs = load_runs(work_spaces, names)
    rows = [summary_row(r) for r in runs]
    write_text(out / "results.md", markdown(runs, rows) + "\n")
    write_csv(out / "results.csv", rows)
    written = [out / "results.md", out / "results.csv"]
    per_class = per_class_rows(runs)
    if per_class:
        write_csv(out / "per_class_iou.csv", per_class)
        written.append(out / "per_class_iou.csv")
    if plot_sweeps(runs, out / "miou_vs_threshold.png"):
        written.append(out / "miou_vs_threshold.png")
    if gallery > 0:
        write_gallery(runs, out, gallery)
        written.append(out / "gallery.html")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wavecam.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work_spaces", nargs="+", metavar="WS", help="multi-stage work spaces (--work_space)")
    p.add_argument("--out", required=True, help="folder for the report")
    p.add_argument("--gallery", type=int, default=0, metavar="N",
                   help="also write gallery.html with N images: best, median and worst by per-image mIoU")
    p.add_argument("--names", nargs="+", help="run names, one per work space (default: the folder names)")
    a = p.parse_args(argv)

    def job() -> None:
        written = report(a.work_spaces, a.out, a.gallery, a.names)
        print(Path(a.out, "results.md").read_text())
        print("wrote " + ", ".join(str(w) for w in written))

    return run_cli(job, "--out")


if __name__ == "__main__":
    sys.exit(main())
