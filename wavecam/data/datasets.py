"""torch Datasets shared by VOC and COCO.

A *source* (VOC12, COCO2014) knows where files are: `load_image(id)`, `labels(ids)`,
`load_gt(id)`, `num_classes`. The datasets here only add the transforms of each pass.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from wavecam.data import transforms as T
from wavecam.engine.sampling import SampleKey, sample_generator
from wavecam.errors import BadFileError, DatasetRootError, WavecamError
from wavecam.io import check_label_map, load_label_map
from wavecam.labels.randomwalk import affinity_labels, downsample_label

log = logging.getLogger("wavecam")


class Source(Protocol):
    num_classes: int
    class_names: tuple[str, ...]
    SPLITS: tuple[str, ...]

    def load_image(self, image_id: str) -> np.ndarray: ...
    def labels(self, ids: list[str]) -> np.ndarray: ...
    def load_gt(self, image_id: str) -> np.ndarray: ...
    def mask_path(self, image_id: str) -> Path | None: ...
    def split(self, name_or_path: str) -> list[str]: ...
    def check_ids(self, ids: list[str]) -> None: ...


def open_source(dataset: str, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                root_option: str = "root", voc_label_source: str = "xml", coco_split_images: str = "all",
                coco_crowd: str = "background") -> Source:
    """The source of `dataset` ("voc" or "coco") at `root`, with the options of that dataset (see
    VOC12 and COCO2014). A root that is missing or laid out otherwise raises DatasetRootError led by
    `root_option`, the flag or config key that named it, since that is what the user has to fix."""
    if dataset not in ("voc", "coco"):
        raise ValueError(f"unknown dataset {dataset!r}: voc or coco")
    try:
        # Imported here: the COCO module (and its index) is only wanted by COCO runs.
        if dataset == "voc":
            from wavecam.data.voc import VOC12

            return VOC12(root, cache_dir, voc_label_source)
        from wavecam.data.coco import COCO2014

        return COCO2014(root, cache_dir, split_images=coco_split_images, crowd=coco_crowd)
    except DatasetRootError as e:
        raise DatasetRootError(f"{root_option}: {e}") from None


def split_ids(source: Source, name: str) -> list[str]:
    """The ids of a split name or a list file, checked against the images. The reference's list
    paths (`voc12/train_aug.txt`) still work when the file is absent: the split of that name is
    derived from the dataset."""
    path = Path(name)
    if not path.is_file() and path.suffix == ".txt" and path.stem in source.SPLITS:
        log.info("%s not found: using the %s split derived from the dataset", name, path.stem)
        name = path.stem
    ids = source.split(name)
    if not ids:
        raise WavecamError(f"the id list {name} is empty")
    source.check_ids(ids)
    return ids


def checked_gt(source: Source, image_id: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """`source.load_gt(image_id)` as (H, W) uint8, checked as every label map is (`check_label_map`):
    a mask of another dataset or one converted to colours would otherwise train on, or be scored
    against, values that are no class. `size` is its image's, where the caller has the image."""
    return check_label_map(source.load_gt(image_id), source.mask_path(image_id), source.num_classes, size=size,
                           what="ground truth", fix="check the dataset: put its original mask back")


def prepare_gt(source: Source, ids: list[str]) -> None:
    """Render ground-truth masks up front, in parallel, where the dataset renders them (COCO)."""
    if hasattr(source, "prepare_masks"):
        source.prepare_masks(ids)


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

    def __getitem__(self, key: int | SampleKey) -> dict:
        i, rng = sample_generator(key)
        img = self.source.load_image(self.ids[i])
        return {
            "name": self.ids[i],
            "img": T.classification_transform(img, self.resize_long, self.hflip, self.crop_size, rng),
            "label": self.label[i],
        }


class InferenceDataset(Dataset):
    """Whole normalised images for multi-scale inference (batch size 1: sizes differ). With
    `skip_bad`, an unreadable image yields {"name", "bad": reason} instead of stopping the pass.

    With `scales`, the item's "scaled" holds the image at each scale, resized as uint8 by PIL's
    bicubic and then normalised, as the reference's loader does; resizing the normalised tensor
    instead gives CAMs that correlate 0.999 rather than 0.99999 with the reference's.
    """

    def __init__(self, source: Source, ids: list[str], with_labels: bool = True, skip_bad: bool = False,
                 scales: tuple[float, ...] | None = None):
        self.source, self.ids, self.skip_bad, self.scales = source, list(ids), skip_bad, scales
        self.label = torch.from_numpy(source.labels(self.ids)) if with_labels else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        try:
            img = self.source.load_image(self.ids[i])
        except BadFileError as e:
            if not self.skip_bad:
                raise
            return {"name": self.ids[i], "bad": str(e)}
        item = {"name": self.ids[i], "img": T.hwc_to_chw(T.normalize(img)), "size": img.shape[:2]}
        if self.scales is not None:
            item["scaled"] = [item["img"] if s == 1 else T.hwc_to_chw(T.normalize(T.rescale(img, s)))
                              for s in self.scales]
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

    def __getitem__(self, key: int | SampleKey) -> dict:
        i, rng = sample_generator(key)
        image_id = self.ids[i]
        img = self.source.load_image(image_id)
        label = load_label_map(Path(self.label_dir) / f"{image_id}.png", self.source.num_classes,
                               size=img.shape[:2], what="ir_label",
                               fix="delete it and re-run --cam_to_ir_label_pass")
        img, label = T.segmentation_transform(img, label, self.rescale, self.hflip, self.crop_size, rng)
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


class E2ETrainDataset(Dataset):
    """End-to-end (AFA) training: the image randomly rescaled by a factor in `scale_range`, flipped,
    cropped to `crop_size` (padded where smaller) and normalised; its multi-hot label; and `img_box`
    (4,) int64 (y0, y1, x0, x1), the part of the crop that holds image rather than padding.

    The defaults are AFA's (datasets/voc.py, coco.py and transforms.py): `resample="pil_bilinear"`
    resizes by PIL bilinear to the truncated size; `pad="black"` crops the uint8 image on a black
    canvas and normalises afterwards, so the padding holds -mean/std. The other choices are what this
    trainer did before: "cv2_bicubic" (rounded size; about 10x faster, for a loader that cannot keep
    up) and "mean" (padding 0 after normalising, the mean colour). Either way every label outside
    `img_box` is ignored, so the padding only changes what the network sees.
    """

    RESAMPLE = ("pil_bilinear", "cv2_bicubic")
    PAD = ("black", "mean")

    def __init__(self, source: Source, ids: list[str], crop_size: int = 512,
                 scale_range: tuple[float, float] | None = (0.5, 2.0), hflip: bool = True,
                 resample: str = "pil_bilinear", pad: str = "black"):
        if resample not in self.RESAMPLE:
            raise ValueError(f"resample must be one of {', '.join(self.RESAMPLE)}, got {resample!r}")
        if pad not in self.PAD:
            raise ValueError(f"pad must be one of {', '.join(self.PAD)}, got {pad!r}")
        self.source, self.ids = source, list(ids)
        self.label = torch.from_numpy(source.labels(self.ids))
        self.crop_size, self.scale_range, self.hflip = crop_size, scale_range, hflip
        self.resample, self.pad = resample, pad

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | SampleKey) -> dict:
        i, rng = sample_generator(key)
        img = self.source.load_image(self.ids[i])
        if self.scale_range:
            scale = T.uniform(*self.scale_range, rng)
            if self.resample == "pil_bilinear":
                img = T.truncating_bilinear_rescale(img, scale)
            else:
                img = T.rescale(img, scale, backend="cv2")
        if self.hflip and T.randint(0, 1, rng):
            img = img[:, ::-1]
        # Cropping a map of ones along with the image shows where the image landed in the crop.
        inside = np.ones(img.shape[:2], np.uint8)
        if self.pad == "black":
            img, inside = T.random_crop([img, inside], self.crop_size, [0, 0], rng)
            img = T.normalize(img)
        else:
            img, inside = T.random_crop([T.normalize(img), inside], self.crop_size, [0.0, 0], rng)
        return {"name": self.ids[i], "img": T.hwc_to_chw(img), "label": self.label[i], "img_box": _box_of(inside)}


def _box_of(mask: np.ndarray) -> torch.Tensor:
    """(y0, y1, x0, x1) bounding the non-zero part of a 2-D mask, end-exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return torch.tensor([rows[0], rows[-1] + 1, cols[0], cols[-1] + 1], dtype=torch.int64)


class SegmentationDataset(Dataset):
    """Whole normalised images for evaluating a segmenter (batch size 1: sizes differ); with `with_gt`,
    also the (H, W) int64 ground truth (255 ignored) and the multi-hot image label."""

    def __init__(self, source: Source, ids: list[str], with_gt: bool = True):
        self.source, self.ids, self.with_gt = source, list(ids), with_gt
        self.label = torch.from_numpy(source.labels(self.ids)) if with_gt else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        image_id = self.ids[i]
        img = self.source.load_image(image_id)
        item = {"name": image_id, "img": T.hwc_to_chw(T.normalize(img))}
        if self.with_gt:
            item["gt"] = torch.from_numpy(checked_gt(self.source, image_id, size=img.shape[:2]).astype(np.int64))
            item["label"] = self.label[i]
        return item
