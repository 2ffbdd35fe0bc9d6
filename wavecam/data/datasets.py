"""torch Datasets shared by VOC and COCO.

A *source* (VOC12, COCO2014) knows where files are: `load_image(id)`, `labels(ids)`,
`load_gt(id)`, `num_classes`. The datasets here only add the transforms of each pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from wavecam.data import transforms as T
from wavecam.io import WavecamError, load_png
from wavecam.randomwalk import affinity_labels, downsample_label


class Source(Protocol):
    num_classes: int
    class_names: tuple[str, ...]

    def load_image(self, image_id: str) -> np.ndarray: ...
    def labels(self, ids: list[str]) -> np.ndarray: ...
    def load_gt(self, image_id: str) -> np.ndarray: ...


class ClassificationDataset(Dataset):
    """CAM / WaveCAM training: (3, crop, crop) image and its multi-hot label."""

    def __init__(
        self,
        source: Source,
        ids: list[str],
        crop_size: int | None = 512,
        resize_long: tuple[int, int] | None = (320, 640),
        hflip: bool = True,
    ):
        self.source, self.ids = source, list(ids)
        self.label = torch.from_numpy(source.labels(self.ids))
        self.crop_size, self.resize_long, self.hflip = crop_size, resize_long, hflip

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        img = self.source.load_image(self.ids[i])
        return {
            "name": self.ids[i],
            "img": T.classification_transform(img, self.resize_long, self.hflip, self.crop_size),
            "label": self.label[i],
        }


class InferenceDataset(Dataset):
    """Whole normalised images for multi-scale inference (batch size 1: sizes differ)."""

    def __init__(self, source: Source, ids: list[str], with_labels: bool = True):
        self.source, self.ids = source, list(ids)
        self.label = torch.from_numpy(source.labels(self.ids)) if with_labels else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        img = self.source.load_image(self.ids[i])
        item = {"name": self.ids[i], "img": T.hwc_to_chw(T.normalize(img)), "size": img.shape[:2]}
        if self.label is not None:
            item["label"] = self.label[i]
        return item


class AffinityDataset(Dataset):
    """IRN training: a crop of the image, and IRN's pair labels (bg_pos, fg_pos, neg; each
    (D, S)) from the same crop of its ir_label map reduced to the feature stride."""

    def __init__(self, source: Source, ids: list[str], label_dir: str, path_index, crop_size: int = 512,
                 rescale: tuple[float, float] | None = (0.5, 1.5), hflip: bool = True, stride: int = 4):
        if crop_size // stride != path_index.feature_size[0]:
            raise ValueError(f"path index size {path_index.feature_size} does not fit crop {crop_size}")
        self.source, self.ids, self.label_dir = source, list(ids), label_dir
        self.path_index, self.crop_size, self.rescale, self.hflip, self.stride = (
            path_index, crop_size, rescale, hflip, stride)
        missing = [i for i in self.ids if not (Path(label_dir) / f"{i}.png").is_file()]
        if missing:
            raise WavecamError(f"{len(missing)} id(s) have no ir_label, e.g. {Path(label_dir) / missing[0]}.png; "
                               "run --cam_to_ir_label_pass over the same --train_list first")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        image_id = self.ids[i]
        img = self.source.load_image(image_id)
        label = load_png(Path(self.label_dir) / f"{image_id}.png")
        img, label = T.segmentation_transform(img, label, self.rescale, self.hflip, self.crop_size)
        bg_pos, fg_pos, neg = affinity_labels(downsample_label(label, self.stride), self.path_index)
        return {"name": image_id, "img": img, "bg_pos": bg_pos, "fg_pos": fg_pos, "neg": neg}


class TopLeftCropDataset(Dataset):
    """Images cropped (or zero-padded) to crop_size from the top-left corner: IRN estimates the
    displacement field's mean over these after training."""

    def __init__(self, source: Source, ids: list[str], crop_size: int):
        self.source, self.ids, self.crop_size = source, list(ids), crop_size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        img = T.normalize(self.source.load_image(self.ids[i]))[: self.crop_size, : self.crop_size]
        canvas = np.zeros((self.crop_size, self.crop_size, 3), np.float32)
        canvas[: img.shape[0], : img.shape[1]] = img
        return {"name": self.ids[i], "img": T.hwc_to_chw(canvas)}
