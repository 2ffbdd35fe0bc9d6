"""The report's numbers as tables and a plot: one summary row per run (results.md, results.csv),
per-class IoU in long format (per_class_iou.csv) and the markdown appendix, and seeds mIoU against
the background threshold (miou_vs_threshold.png). Every number comes from the eval passes' JSON."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from wavecam.classes import VOC_CLASSES
from wavecam.data.coco import COCO_CLASSES
from wavecam.io import atomic_path
from wavecam.report.results import Run, stages

matplotlib.use("Agg")  # files only; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402

FG_NOTE = (
    "Foreground precision / recall: the mean over the foreground classes present in the ground truth of "
    "the per-class precision TP/(TP+FP) and recall TP/(TP+FN) (a present class never predicted counts as "
    "precision 0). It is a class-balanced mean, not a binary foreground-vs-background figure."
)


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


def image_counts(row: dict) -> str:
    """The image counts of a summary row's stages, each distinct count once: "200" when every stage
    scored the same images, "200 / 100" when they differ."""
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
    ("images", image_counts),
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
