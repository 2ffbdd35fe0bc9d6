"""Image and label transforms shared by every pass (numpy, H x W x C images).

Randomness comes from a torch generator: the datasets pass one seeded from (seed, epoch, index),
so an image's augmentation does not depend on the worker, the rank or a resumed run; without
one the global torch generator is used.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
from PIL import Image

from wavecam.classes import IGNORE_INDEX

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def randint(low: int, high: int, rng: torch.Generator | None = None) -> int:
    """Uniform integer in [low, high], both inclusive."""
    return int(torch.randint(low, high + 1, (), generator=rng).item())


def uniform(low: float, high: float, rng: torch.Generator | None = None) -> float:
    return low + (high - low) * float(torch.rand((), generator=rng).item())


def rescale(img: np.ndarray, scale: float, nearest: bool = False, backend: str = "pil") -> np.ndarray:
    """Resize a uint8 image (bicubic) or label map (nearest) by `scale`, with IRN's rounding.

    `backend="pil"` is the reference's `pil_rescale`: PIL's bicubic widens its kernel when it
    shrinks (antialiasing) and its nearest samples pixel centres. cv2 does neither, so the two give
    different pictures at scale 0.5, and nearest label maps shifted by up to a pixel; cv2 is
    about 10x faster (0.5 vs 7.6 ms for a 500x375 image at 1.5x), which only matters where the
    loader cannot keep up.
    """
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return img
    if backend == "cv2":
        return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_CUBIC)
    if backend != "pil":
        raise ValueError(f"unknown resampling backend {backend!r}: pil or cv2")
    return np.asarray(Image.fromarray(img).resize(size, Image.NEAREST if nearest else Image.BICUBIC))


def truncating_bilinear_rescale(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize a uint8 image by `scale` as AFA's training loader does (`_img_rescaling` in its
    datasets/transforms.py): PIL bilinear to int(scale * w) x int(scale * h). The size is truncated,
    where `rescale` rounds as IRN does, and PIL's bilinear widens its kernel when it shrinks, as its
    bicubic does."""
    h, w = img.shape[:2]
    size = (max(1, int(scale * w)), max(1, int(scale * h)))
    if size == (w, h):
        return img
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))


def random_resize_long(img: np.ndarray, min_long: int, max_long: int, rng: torch.Generator | None = None) -> np.ndarray:
    target = randint(min_long, max_long, rng)
    return rescale(img, target / max(img.shape[:2]))


def normalize(img: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 with ImageNet mean/std."""
    return (img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def random_crop(arrays: list[np.ndarray], size: int, fill: list[float], rng: torch.Generator | None = None
                ) -> list[np.ndarray]:
    """One random `size` x `size` window applied to every array (same H, W). Where an array is
    smaller than the window it is placed at a random offset on a canvas of `fill` values, as IRN
    does, so small images are padded rather than stretched."""
    h, w = arrays[0].shape[:2]
    ch, cw = min(size, h), min(size, w)
    top_src, top_dst = _offsets(h, size, rng)
    left_src, left_dst = _offsets(w, size, rng)
    out = []
    for a, f in zip(arrays, fill, strict=True):
        canvas = np.full((size, size, *a.shape[2:]), f, dtype=a.dtype)
        canvas[top_dst:top_dst + ch, left_dst:left_dst + cw] = a[top_src:top_src + ch, left_src:left_src + cw]
        out.append(canvas)
    return out


def _offsets(length: int, size: int, rng: torch.Generator | None) -> tuple[int, int]:
    """(start in the source, start in the canvas) along one axis."""
    if length >= size:
        return randint(0, length - size, rng), 0
    return 0, randint(0, size - length, rng)


def hwc_to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def classification_transform(
    img: np.ndarray, resize_long: tuple[int, int] | None, hflip: bool, crop_size: int | None,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """CAM training: random long-side resize, flip, ImageNet normalisation, random crop (pad 0)."""
    if resize_long:
        img = random_resize_long(img, *resize_long, rng)
    if hflip and randint(0, 1, rng):
        img = img[:, ::-1]
    img = normalize(img)
    if crop_size:
        (img,) = random_crop([img], crop_size, [0.0], rng)
    return hwc_to_chw(img)


def segmentation_transform(
    img: np.ndarray,
    label: np.ndarray,
    scale_range: tuple[float, float] | None,
    hflip: bool,
    crop_size: int | None,
    rng: torch.Generator | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """IRN training: random rescale of image and label together, flip, normalise, joint crop
    (image padded with 0, label with 255 = ignore)."""
    if scale_range:
        s = uniform(*scale_range, rng)
        img, label = rescale(img, s), rescale(label, s, nearest=True)
    if hflip and randint(0, 1, rng):
        img, label = img[:, ::-1], label[:, ::-1]
    img = normalize(img)
    if crop_size:
        img, label = random_crop([img, label], crop_size, [0.0, IGNORE_INDEX], rng)
    return hwc_to_chw(img), np.ascontiguousarray(label)


@functools.lru_cache(maxsize=256)
def pil_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices (n_out,) int64 of PIL's NEAREST resize along one axis. PIL walks the output
    accumulating the scale in double precision (`ImagingScaleAffine`): x_i = int(s/2 + i s),
    s = n_in / n_out, summed step by step. Its rounding differs from torch's "nearest-exact"
    (floor((i + 0.5) * s) in float32) in about one case in five, so it is reproduced here."""
    s = n_in / n_out
    out = np.empty(n_out, np.int64)
    x = 0.5 * s
    for i in range(n_out):
        out[i] = min(int(x), n_in - 1)
        x += s
    return out
