"""Pixel-adaptive refinement (PAR) of AFA (Ru et al., CVPR 2022).

Each iteration replaces a pixel's scores by a weighted sum of its 8 neighbours at every dilation
(replicate padding at the border). The weights are a softmax over those neighbours of how close
their colour is, measured against the spread of colours among them, plus `w2` times a softmax of
how close they are in space. Colour differences are divided by the local standard deviation, so the
result does not depend on an affine rescaling of each colour channel: normalised or 0..1 images
refine alike.

The weights of a pixel sum to 1 + w2, not 1, as in AFA: every iteration multiplies a constant map by
(1 + w2). Callers take an argmax over classes, which that scale does not change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The 8 neighbours of a pixel, row by row.
_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


class PAR(nn.Module):
    def __init__(self, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), num_iter: int = 10,
                 w1: float = 0.3, w2: float = 0.01):
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.num_iter = num_iter
        self.w1 = w1
        self.w2 = w2
        # Distance to each neighbour, dilation-major: (K,) with K = 8 * len(dilations).
        dist = [d * math.hypot(dy, dx) for d in self.dilations for dy, dx in _OFFSETS]
        self.register_buffer("distances", torch.tensor(dist), persistent=False)

    def neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, K, H, W): each pixel's neighbours in the order of `distances`."""
        h, w = x.shape[2:]
        out = []
        for d in self.dilations:
            padded = F.pad(x, (d, d, d, d), mode="replicate")
            out += [padded[..., d + dy * d: d + dy * d + h, d + dx * d: d + dx * d + w] for dy, dx in _OFFSETS]
        return torch.stack(out, dim=2)

    def affinity(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1, K, H, W) weights of each pixel's neighbours."""
        near = self.neighbours(images)
        colour = (near - images[:, :, None]).abs() / (near.std(dim=2, keepdim=True) + 1e-8) / self.w1
        colour = -(colour**2).mean(dim=1, keepdim=True)
        position = -(self.distances / self.distances.std() / self.w1) ** 2  # the same for every pixel
        return colour.softmax(dim=2) + self.w2 * position.softmax(dim=0)[:, None, None]

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), masks (B, C, h, w) scores -> (B, C, H, W) refined scores.
        Masks are first resized to the images' size (bilinear, corners aligned, as AFA)."""
        masks = F.interpolate(masks, size=images.shape[2:], mode="bilinear", align_corners=True)
        aff = self.affinity(images)
        for _ in range(self.num_iter):
            masks = (self.neighbours(masks) * aff).sum(dim=2)
        return masks
