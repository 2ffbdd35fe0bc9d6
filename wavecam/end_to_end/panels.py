"""TensorBoard image panels of the end-to-end trainer, the ones AFA's training script writes
(`utils/imutils.py`): the crops, their CAMs, the labels the losses see and the affinity learnt from
attention. Each panel is a grid of the batch, two images to a row, as AFA's.

    train/images          the crops, denormalised
    cam/cams              the multi-scale CAM of the strongest present class, jet over the image
    labels/pseudo         the PAR-refined CAM pseudo label (VOC palette; 255 unsure)
    labels/seg_target     what the segmentation loss is trained on (later: the propagated label)
    labels/seg_pred       the segmentation head's argmax
    affinity/pixel_<p>    the predicted affinity of one pixel to every other (viridis, min-max per
                          image), for the pixels at p% of the grid's height down its diagonal: AFA's
                          query pixels int(h * p/100) * (w + 1)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from wavecam.classes import voc_palette
from wavecam.data.transforms import IMAGENET_MEAN, IMAGENET_STD

QUERY_FRACTIONS = (0.0, 0.3, 0.6, 0.9)


class TrainPanels(NamedTuple):
    """What one micro-batch of a training step shows, B images of H x W, affinity grid h x w."""

    images: torch.Tensor  # (B, 3, H, W) normalised
    cls_labels: torch.Tensor  # (B, C) multi-hot
    cams: torch.Tensor  # (B, C, H, W) in [0, 1]
    pseudo: torch.Tensor  # (B, H, W) long
    seg_target: torch.Tensor  # (B, H, W) long
    seg_logits: torch.Tensor  # (B, C+1, H, W)
    attn_pred: torch.Tensor  # (B, h*w, h*w)
    aff_size: tuple[int, int]  # (h, w)


def denormalised(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised -> uint8 RGB."""
    mean = torch.as_tensor(IMAGENET_MEAN, device=images.device)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, device=images.device)[:, None, None]
    return ((images.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def heat(values: torch.Tensor, cmap: str) -> torch.Tensor:
    """(B, H, W) in [0, 1] -> (B, 3, H, W) uint8 through a matplotlib colour map."""
    import matplotlib

    rgb = matplotlib.colormaps[cmap](values.clamp(0, 1).cpu().numpy())[..., :3]  # (B, H, W, 4) floats
    return torch.from_numpy((rgb * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)


def coloured(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) class indices (255 unsure) -> (B, 3, H, W) uint8 in the VOC palette."""
    palette = torch.from_numpy(voc_palette(256))
    return palette[labels.cpu().long().clamp(0, 255)].permute(0, 3, 1, 2)


def affinity_maps(attn_pred: torch.Tensor, aff_size: tuple[int, int], size: tuple[int, int],
                  fraction: float) -> torch.Tensor:
    """(B, N, N) affinity -> (B, H, W) in [0, 1]: the row of the query pixel at `fraction` of the
    grid's height down its diagonal, resized to `size` and min-max normalised per image."""
    h, w = aff_size
    row = int(h * fraction)
    query = row * w + min(row, w - 1)
    maps = attn_pred[:, query].float().view(-1, 1, h, w)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    return (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low).clamp(min=1e-12)


def write_panels(writer, panels: TrainPanels, step: int) -> None:
    """Add every panel of the module docstring to a SummaryWriter at `step`."""
    from torchvision.utils import make_grid

    def add(tag: str, batch: torch.Tensor) -> None:
        writer.add_image(tag, make_grid(batch.cpu(), nrow=2), step)

    images = denormalised(panels.images).cpu()
    size = tuple(images.shape[2:])
    strongest = (panels.cams.float() * panels.cls_labels[:, :, None, None]).amax(dim=1)  # (B, H, W)
    add("train/images", images)
    add("cam/cams", (heat(strongest, "jet").float() * 0.5 + images.float() * 0.5).to(torch.uint8))
    add("labels/pseudo", coloured(panels.pseudo))
    add("labels/seg_target", coloured(panels.seg_target))
    add("labels/seg_pred", coloured(panels.seg_logits.argmax(dim=1)))
    for fraction in QUERY_FRACTIONS:
        add(f"affinity/pixel_{round(fraction * 100)}",
            heat(affinity_maps(panels.attn_pred, panels.aff_size, size, fraction), "viridis"))
