"""Multi-scale, flipped CAM inference (IRN/ReCAM's make_cam), shared by make_cam, make_wavecam and
the end-to-end network.

Sizes follow the reference exactly. With a stride-16 backbone an H x W input gives a feature grid of
ceil(H/16) x ceil(W/16) cells, each covering 16 x 16 pixels of the input padded to a multiple of 16:
  * `cam` is every scale's map resized straight to ceil(H/4) x ceil(W/4) (`strided_size`);
  * `high_res` is every scale's map resized to ceil(H/16)*16 x ceil(W/16)*16 (`strided_up_size`) and
    then cropped to H x W, so cells stay on the pixels they cover instead of being stretched over H x W.
Both are summed over scales, restricted to the present classes, then divided by their maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]  # (N, 3, h, w) -> (N, D, h', w')

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)


def strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    return (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1


def strided_up_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    h, w = strided_size(size, stride)
    return h * stride, w * stride


@torch.no_grad()
def multiscale_cam_batch(
    features_fn: FeaturesFn,
    images: torch.Tensor,
    weight: torch.Tensor,
    keys: Sequence[torch.Tensor],
    scales: Sequence[float] = DEFAULT_SCALES,
    stride: int = 4,
    feature_stride: int = 16,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format | None = None,
    scaled: Sequence[torch.Tensor] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """CAMs of N normalised images of one size (N, 3, H, W), one (strided, high_res) pair per image
    for the classes of its `keys` (K,), from the 1x1 kernel `weight` (C, D, 1, 1) applied to
    `features_fn`'s output.

    Each pair is float32 (K, ceil(H/stride), ceil(W/stride)) and (K, H, W) maps on `device`, each
    divided by its maximum (+1e-5). `features_fn`'s model must already be on `device` (default: the
    images'); `amp_dtype` (torch.bfloat16 / torch.float16) runs the backbone under autocast;
    `memory_format` (torch.channels_last) is the layout the backbone gets its input in (that of its
    weights).

    `scaled`, one (N, 3, h_s, w_s) batch per scale, are the inputs already resized as the reference
    does (see `InferenceDataset`); without them the images are resized here, on their device.
    """
    device = torch.device(device) if device is not None else images.device
    if scaled is not None and len(scaled) != len(scales):
        raise ValueError(f"{len(scaled)} resized inputs for {len(scales)} scales")
    images, weight = images.to(device), weight.to(device)
    keys = [k.to(device=device, dtype=torch.long) for k in keys]
    size = tuple(images.shape[2:])
    small, up = strided_size(size, stride), strided_up_size(size, feature_stride)

    strided = [images.new_zeros((len(k), *small), dtype=torch.float32) for k in keys]
    high_res = [images.new_zeros((len(k), *up), dtype=torch.float32) for k in keys]
    for j, s in enumerate(scales):
        x = scaled[j].to(device, non_blocking=True) if scaled is not None else _rescale(images, s)
        cams = _flipped_cams(features_fn, x, weight, amp_dtype, memory_format)  # (N, C, h', w')
        for cam, k, acc_small, acc_up in zip(cams, keys, strided, high_res, strict=True):
            if len(k):
                present = cam[k][None]  # (1, K, h', w')
                acc_small += F.interpolate(present, small, mode="bilinear", align_corners=False)[0]
                acc_up += F.interpolate(present, up, mode="bilinear", align_corners=False)[0]
    return [(_max_normalise(st), _max_normalise(hr[:, : size[0], : size[1]]))
            for st, hr in zip(strided, high_res, strict=True)]


def _rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1:
        return images
    # round() halves to even, as the reference's np.round; antialiasing stands in for PIL's when shrinking,
    # bilinear for its bicubic (torch's bicubic overshoots on the normalised tensor).
    size = (round(images.shape[2] * scale), round(images.shape[3] * scale))
    return F.interpolate(images, size, mode="bilinear", align_corners=False, antialias=True)


def _flipped_cams(features_fn: FeaturesFn, images: torch.Tensor, weight: torch.Tensor,
                  amp_dtype: torch.dtype | None, memory_format: torch.memory_format | None) -> torch.Tensor:
    """ReLU'd CAMs of the images plus those of their mirror images flipped back: (N, C, h', w')."""
    n = images.shape[0]
    both = torch.cat([images, images.flip(-1)])
    if memory_format is not None:
        both = both.contiguous(memory_format=memory_format)
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        features = features_fn(both)
    # The 1x1 projection is cheap, so it runs in float32 whatever the backbone's precision.
    cams = F.relu(F.conv2d(features.float(), weight.float()))
    return cams[:n] + cams[n:].flip(-1)


def _max_normalise(cams: torch.Tensor) -> torch.Tensor:
    return cams / (cams.amax(dim=(1, 2), keepdim=True) + 1e-5)


def threshold_channels(scores: np.ndarray, bg_thres: float) -> np.ndarray:
    """(K, ...) class scores -> (...) channel indices: 0 (the background) where no class scores above
    `bg_thres` (a tie goes to the background), else 1 + the best class's channel. The one background
    threshold of CAM seeds, cam_to_ir_label's confident labels and make_sem_seg's pseudo labels."""
    background = np.full((1, *scores.shape[1:]), bg_thres, scores.dtype)
    return np.concatenate([background, scores]).argmax(0)


def channel_classes(keys: np.ndarray) -> np.ndarray:
    """The label of each channel of `threshold_channels`: 0 for the background, then keys + 1 (keys
    are a cam_mask file's 0-based foreground classes)."""
    return np.concatenate([[0], np.asarray(keys, dtype=np.int64).reshape(-1) + 1])


def seeds(cam: dict, bg_thres: float) -> np.ndarray:
    """(H, W) uint8 label map of a cam_mask file's high-resolution CAMs at the background threshold."""
    return channel_classes(cam["keys"])[threshold_channels(cam["high_res"], bg_thres)].astype(np.uint8)
