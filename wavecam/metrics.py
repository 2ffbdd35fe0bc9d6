"""Confusion matrices and IoU, with chainercv's definitions.

chainercv's `calc_semantic_segmentation_confusion` ignores ground-truth pixels < 0 (VOC's 255
border is read as -1 there); `calc_semantic_segmentation_iou` gives
IoU_c = TP / (TP + FP + FN), NaN for a class absent from both, and mIoU is the nanmean. We
accept 255 in the ground truth directly and accumulate over images in one streaming object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from wavecam.classes import IGNORE_INDEX


class ConfusionMatrix:
    """Streaming (n_class x n_class) confusion matrix, rows = ground truth, columns = prediction."""

    def __init__(self, n_class: int):
        self.n_class = n_class
        self.mat = np.zeros((n_class, n_class), dtype=np.int64)
        self.n_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        if pred.dtype == gt.dtype == np.uint8 and self._update_uint8(pred, gt):
            return
        gt = gt.astype(np.int64, copy=False).ravel()
        pred = pred.astype(np.int64, copy=False).ravel()
        keep = (gt >= 0) & (gt != IGNORE_INDEX)
        gt, pred = gt[keep], pred[keep]
        if gt.size and (gt.max() >= self.n_class or pred.min() < 0 or pred.max() >= self.n_class):
            raise ValueError(
                f"labels outside 0..{self.n_class - 1}: gt max {gt.max()}, prediction range "
                f"{pred.min()}..{pred.max()}"
            )
        self.mat += np.bincount(self.n_class * gt + pred, minlength=self.n_class**2).reshape(self.n_class, -1)
        self.n_images += 1

    def _update_uint8(self, pred: np.ndarray, gt: np.ndarray) -> bool:
        """The PNG case (both uint8): one 16-bit index gt * 256 + pred and one bincount, with no int64
        copies or masking. Several MB-sized temporaries per image would each be a fresh mmap with
        its page faults, which made evaluation 10x slower. False (nothing counted) if a label is out
        of range: the general path then raises its error."""
        idx = gt.astype(np.uint16).ravel()
        idx <<= 8
        idx |= pred.ravel()
        table = np.bincount(idx, minlength=1 << 16).reshape(256, 256)[:IGNORE_INDEX]  # gt 255 is ignored
        n = self.n_class
        if table[n:].any() or table[:n, n:].any():
            return False
        self.mat += table[:n, :n]
        self.n_images += 1
        return True

    def merge(self, other: ConfusionMatrix) -> None:
        self.mat += other.mat
        self.n_images += other.n_images

    def iou(self) -> np.ndarray:
        return iou_from_confusion(self.mat)

    def miou(self) -> float:
        return float(np.nanmean(self.iou()))

    def summary(self) -> dict:
        """The numbers every results/*.json holds."""
        tp = np.diag(self.mat).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / self.mat.sum(axis=0)
            recall = tp / self.mat.sum(axis=1)
        return {
            "miou": self.miou(),
            "iou": _nan_to_none(self.iou()),
            "precision": _nan_to_none(precision),
            "recall": _nan_to_none(recall),
            "pixel_accuracy": float(tp.sum() / max(self.mat.sum(), 1)),
            "n_images": self.n_images,
        }


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (row sum + column sum - TP); NaN where the class appears nowhere."""
    tp = np.diag(confusion).astype(np.float64)
    denom = confusion.sum(axis=1) + confusion.sum(axis=0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / denom


def calc_semantic_segmentation_confusion(
    pred_labels: Iterable[np.ndarray], gt_labels: Iterable[np.ndarray], n_class: int | None = None
) -> np.ndarray:
    """Confusion over pairs of label maps. Without `n_class`, the size grows to the largest label
    seen, as chainercv's does."""
    pairs = [(np.asarray(p), np.asarray(g)) for p, g in zip(pred_labels, gt_labels, strict=True)]
    if n_class is None:
        n_class = 1
        for p, g in pairs:
            valid = (g >= 0) & (g != IGNORE_INDEX)
            if valid.any():
                n_class = max(n_class, int(g[valid].max()) + 1, int(p[valid].max()) + 1)
    cm = ConfusionMatrix(n_class)
    for p, g in pairs:
        cm.update(p, g)
    return cm.mat


def unsure_as_background(label: np.ndarray) -> np.ndarray:
    """A pseudo label (H, W) as it is scored: a copy with 255 (IGNORE_INDEX, "unsure" in a label
    map) set to 0, background, as IRN's eval_sem_seg scores it. One definition, so that the
    report's gallery ranks images by the very labels eval_sem_seg scored."""
    label = label.copy()
    label[label == IGNORE_INDEX] = 0
    return label


def _nan_to_none(a: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in a]


def format_iou_table(iou: Sequence[float | None], class_names: Sequence[str], title: str = "") -> str:
    """A per-class IoU table (percent), background first, ending with the mIoU line."""
    names = ["background", *class_names]
    if len(iou) != len(names):
        raise ValueError(f"{len(iou)} IoU values for {len(names)} classes")
    vals = np.array([np.nan if v is None else v for v in iou], dtype=np.float64)
    width = max(len(n) for n in names)
    lines = [title] if title else []
    lines += [f"{n:<{width}}  {'-' if np.isnan(v) else f'{100 * v:5.1f}'}" for n, v in zip(names, vals)]
    lines.append(f"{'mIoU':<{width}}  {100 * np.nanmean(vals):5.1f}")
    return "\n".join(lines)
