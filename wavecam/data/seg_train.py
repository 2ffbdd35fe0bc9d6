"""Stage 3's training data: an image and its label map (pseudo labels, or the ground truth)
augmented as deeplab-pytorch does (`_BaseDataset._augmentation`, libs/datasets/base.py):

1. a scale drawn from a list; the size truncated (int(h * s), int(w * s)); the image resized by
   cv2's bilinear (INTER_LINEAR) as float32, the labels by PIL's nearest neighbour;
2. where smaller than the crop, padded at the bottom and right: the image with its mean colour
   (0 once normalised), the labels with 255 (ignored);
3. a random crop_size x crop_size window;
4. a horizontal flip with probability 1/2.
The image is then normalised for the network's weights (`preprocess`: deeplab-pytorch's BGR
minus the caffe mean, or torchvision's RGB ImageNet normalisation; see `wavecam.models.deeplab`).
Normalising the crop before padding it with 0 equals the reference's padding with the mean before
subtracting it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from wavecam.classes import IGNORE_INDEX
from wavecam.data.datasets import Source, checked_gt
from wavecam.data.transforms import pil_nearest_indices, randint
from wavecam.engine.sampling import SampleKey, sample_generator
from wavecam.errors import WavecamError
from wavecam.io import load_label_map

VOC_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)  # configs/voc12.yaml


def rescale_pair(img: np.ndarray, label: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) image and (H, W) labels -> both at (int(H * scale), int(W * scale)) (at least 1):
    the image float32 by cv2 bilinear, the labels by PIL's nearest neighbour."""
    h, w = label.shape
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    img = cv2.resize(img.astype(np.float32), (tw, th), interpolation=cv2.INTER_LINEAR)
    label = label[pil_nearest_indices(h, th)][:, pil_nearest_indices(w, tw)]
    return img, label


class SegTrainDataset(Dataset):
    """DeepLab training: {"name", "img" (3, crop, crop) float32, "label" (crop, crop) int64}.

    `label_dir` holds `<id>.png` 8-bit label maps (make_sem_seg's pseudo labels); None trains on
    the source's ground truth (`source.load_gt`). `preprocess` turns an (H, W, 3) RGB image in
    0..255 into the network's (3, H, W) input (`model.input_norm`); it has no default because the
    wrong normalisation for the weights still trains, only worse, and nothing would say so.
    `__getitem__` takes an index or a `SampleKey`; all randomness comes from its generator.
    """

    def __init__(self, source: Source, ids: Sequence[str], label_dir: str | Path | None = None,
                 crop_size: int = 321, scales: Sequence[float] = VOC_SCALES, hflip: bool = True, *,
                 preprocess: Callable[[np.ndarray], torch.Tensor]):
        if not scales:
            raise ValueError("scales must hold at least one scale (1.0 for none)")
        self.source, self.ids = source, list(ids)
        self.label_dir = Path(label_dir) if label_dir is not None else None
        self.crop_size, self.scales, self.hflip, self.preprocess = crop_size, tuple(scales), hflip, preprocess
        if self.label_dir is not None:
            missing = [i for i in self.ids if not (self.label_dir / f"{i}.png").is_file()]
            if missing:
                raise WavecamError(
                    f"{len(missing)} id(s) have no label map in {self.label_dir}, e.g. {missing[0]}.png; "
                    "run the pass that writes them (--make_sem_seg_pass) over the same list first")

    def __len__(self) -> int:
        return len(self.ids)

    def load_label(self, image_id: str, size: tuple[int, int]) -> np.ndarray:
        """The (H, W) uint8 labels of `image_id`, checked against the classes and `size`, its image's."""
        if self.label_dir is None:
            return checked_gt(self.source, image_id, size=size)
        return load_label_map(self.label_dir / f"{image_id}.png", self.source.num_classes, size=size,
                              what="pseudo label", fix="delete it and re-run --make_sem_seg_pass, or train on "
                              "other labels (--seg_label_dir)")

    def __getitem__(self, key: int | SampleKey) -> dict:
        index, rng = sample_generator(key)
        image_id = self.ids[index]
        img = self.source.load_image(image_id)
        label = self.load_label(image_id, img.shape[:2])

        scale = self.scales[randint(0, len(self.scales) - 1, rng)]
        img, label = rescale_pair(img, label, scale)
        h, w = label.shape
        crop = self.crop_size
        top, left = randint(0, max(h - crop, 0), rng), randint(0, max(w - crop, 0), rng)
        flip = self.hflip and randint(0, 1, rng) == 1

        ch, cw = min(crop, h), min(crop, w)
        out_img = torch.zeros(3, crop, crop)
        out_img[:, :ch, :cw] = self.preprocess(img[top:top + ch, left:left + cw])
        out_label = torch.full((crop, crop), IGNORE_INDEX, dtype=torch.int64)
        out_label[:ch, :cw] = torch.from_numpy(label[top:top + ch, left:left + cw].astype(np.int64))
        if flip:
            out_img, out_label = out_img.flip(-1), out_label.flip(-1)
        return {"name": image_id, "img": out_img, "label": out_label}
