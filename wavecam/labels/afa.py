"""Online pseudo labels, affinity labels and losses of the end-to-end trainer (AFA's, Ru et al., CVPR 2022).

Conventions: C foreground classes, `cls_labels` (B, C) multi-hot; label maps hold 0 for background,
1..C for the classes and `ignore_index` (255) for unsure pixels; `img_box` (B, 4) rows (y0, y1, x0, x1)
mark the part of each training crop that holds image rather than padding (AFA's `img_box`); outside
it every label is ignored.

One training step, as AFA's (h x w: the last stage's grid of the crop, stride 16):
    out = model(images, cls_labels)                                # logits, seg, attn_pred (B, hw, hw), wave_loss
    ms = multi_scale_cams(model.cams_and_affinity, images)          # no grad; ms.aff from the largest scale
    pseudo = refine_cams_with_bkg(par, images, ms.cams, cls_labels, img_box=box)
    aff_target = affinity_label(pseudo, (h, w), radius_mask(h, w))
    seg_target = pseudo early on, later propagated_label(par, images, ms, cls_labels, radius_mask(*ms.aff_size),
                                                         img_box=box)
    loss = cls loss + wave loss + 0.1 * seg_loss(seg resized to the crop, seg_target)
           + 0.1 * affinity_loss(out.attn_pred, aff_target)

Every function here handles the batch at once where AFA loops over images, except the PAR refinement
inside crop boxes, whose crops differ in size. Only present classes (and the background) compete in
each image: absent ones are masked out of softmaxes and argmaxes, which is what AFA's per-image
selection of "valid keys" does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from wavecam.classes import IGNORE_INDEX
from wavecam.labels.par import PAR

Boxes = torch.Tensor | Sequence[Sequence[int]]
CamFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # images -> (raw CAMs, affinity (B, N, N))


class MultiScaleCAM(NamedTuple):
    cams: torch.Tensor  # (B, C, H, W) in [0, 1]
    aff: torch.Tensor  # (B, N, N) affinity predicted at the largest scale
    aff_size: tuple[int, int]  # its grid (h, w), N = h * w


# --- CAMs -> pseudo labels ---------------------------------------------------------------------

@torch.no_grad()
def multi_scale_cams(cam_fn: CamFn, images: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5)) -> MultiScaleCAM:
    """AFA's multi-scale CAM: at each scale (size int(s*H) x int(s*W)) the image and its mirror image
    are scored together, resized to H x W, the two maxed and ReLU'd; scales are summed; each class's map
    is shifted to a minimum of 0 and divided by its maximum. `cam_fn` is `WaveAFA.cams_and_affinity`."""
    b, _, h, w = images.shape
    total = 0
    for s in scales:
        x = images if s == 1 else F.interpolate(images, size=(int(s * h), int(s * w)), mode="bilinear",
                                                align_corners=False)
        cams, aff = cam_fn(torch.cat([x, x.flip(-1)]))
        if s == max(scales):
            largest, aff_size = aff[:b].float(), tuple(cams.shape[2:])  # the mirror images' half is unused
        cams = F.interpolate(cams.float(), size=(h, w), mode="bilinear", align_corners=False)
        total = total + F.relu(torch.maximum(cams[:b], cams[b:].flip(-1)))
    total = total - total.amin(dim=(2, 3), keepdim=True)
    return MultiScaleCAM(total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5), largest, aff_size)


def cam_to_label(cams: torch.Tensor, cls_labels: torch.Tensor, bg_thres: float = 0.45,
                 high_thre: float | None = None, img_box: Boxes | None = None,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B, C, H, W) CAMs -> (B, H, W) labels: each pixel takes its highest present class, or background
    where that score is <= `bg_thres`. With `high_thre`, scores in (bg_thres, high_thre] are unsure
    (AFA's training call: bg_thres = low_thre); with `img_box`, pixels outside the boxes too."""
    score, label = (cams * cls_labels[:, :, None, None]).max(dim=1)
    label = torch.where(score <= bg_thres, 0, label + 1)
    if high_thre is not None:
        label = label.masked_fill((score > bg_thres) & (score <= high_thre), ignore_index)
    return label if img_box is None else ignore_outside_box(label, img_box, ignore_index)


def refine_cams_with_bkg(par: PAR, images: torch.Tensor, cams: torch.Tensor, cls_labels: torch.Tensor,
                         high_thre: float = 0.55, low_thre: float = 0.35, img_box: Boxes | None = None,
                         ignore_index: int = IGNORE_INDEX, down_scale: int = 2) -> torch.Tensor:
    """AFA's `refine_cams_with_bkg_v2`: CAMs (B, C, H', W') -> refined labels (B, H, W).

    At half the image size, a constant background score (`high_thre`, then `low_thre`) joins the
    present classes' CAMs, a softmax turns them into probabilities, PAR refines them and the argmax,
    resized to H x W, labels the pixel. Pixels the high background score calls background are unsure
    unless the low one does too; confident foreground comes from the high one."""
    size = images.shape[2:]
    small = (size[0] // down_scale, size[1] // down_scale)
    images = F.interpolate(images, size=small, mode="bilinear", align_corners=False)
    keys, valid = _present_first(cls_labels)
    fg = _gather_channels(F.interpolate(cams, size=small, mode="bilinear", align_corners=False), keys[:, 1:] - 1)

    def label_with(bg_thres: float) -> torch.Tensor:
        scores = torch.cat([torch.full_like(fg[:, :1], bg_thres), fg], dim=1)  # (B, K, h, w)
        refined = par(images, _masked_softmax(scores, valid))
        return _argmax_label(F.interpolate(refined, size=size, mode="bilinear", align_corners=False), keys, valid)

    label = combine_high_low(label_with(high_thre), label_with(low_thre), ignore_index)
    return label if img_box is None else ignore_outside_box(label, img_box, ignore_index)


def combine_high_low(high: torch.Tensor, low: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels made with a high and a low background score -> background where both say so, unsure
    where only the high one does, the high one's class elsewhere."""
    return torch.where(high == 0, torch.where(low == 0, 0, ignore_index), high)


def ignore_outside_box(label: torch.Tensor, img_box: Boxes, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    inside = torch.zeros_like(label, dtype=torch.bool)
    for i, (y0, y1, x0, x1) in enumerate(_box_list(img_box)):
        inside[i, y0:y1, x0:x1] = True
    return label.masked_fill(~inside, ignore_index)


# --- affinity ------------------------------------------------------------------------------------

def radius_mask(h: int, w: int, radius: int = 8, device: torch.device | str | None = None) -> torch.Tensor:
    """(h*w, h*w) bool: the pixel pairs of an h x w grid at most `radius` apart along each axis."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys).abs() <= radius) & ((xs[:, None] - xs).abs() <= radius)


def affinity_label(label: torch.Tensor, size: tuple[int, int], mask: torch.Tensor | None = None,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B, H, W) labels -> (B, N, N) long pair labels on the `size` grid (nearest sampling), N = h*w:
    1 for pairs of the same label, 0 for different ones, ignore where either pixel is unsure or the
    pair is outside `mask` (N, N)."""
    small = F.interpolate(label[:, None].float(), size=size, mode="nearest").flatten(1).long()  # (B, N)
    pairs = (small[:, :, None] == small[:, None, :]).long()
    unsure = small == ignore_index
    pairs = pairs.masked_fill(unsure[:, :, None] | unsure[:, None, :], ignore_index)
    return pairs if mask is None else pairs.masked_fill(~mask.bool(), ignore_index)


def affinity_loss(aff_pred: torch.Tensor, aff_label: torch.Tensor) -> torch.Tensor:
    """AFA's `get_aff_loss`: the mean of (1 - affinity) over same-label pairs and of the affinity over
    different-label pairs, averaged; ignored pairs count in neither."""
    pos, neg = aff_label == 1, aff_label == 0
    pos_loss = ((1 - aff_pred) * pos).sum() / (pos.sum() + 1)
    neg_loss = (aff_pred * neg).sum() / (neg.sum() + 1)
    return 0.5 * (pos_loss + neg_loss)


def propagate_cams(cams: torch.Tensor, aff: torch.Tensor, cls_labels: torch.Tensor, bg_thres: float,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """AFA's `propagte_aff_cam_with_bkg`: CAMs (B, C, h, w) on the affinity's grid, affinity (B, N, N)
    -> (B, C+1, h, w) propagated probabilities, background first, absent classes 0.

    The present classes' CAMs and a constant background score go through a softmax; each pixel then
    takes the average of those probabilities over the pixels (within `mask`) weighted by affinity^2."""
    b, _, h, w = cams.shape
    aff = aff.detach()
    if mask is not None:
        aff = aff * mask
    aff = aff**2
    # Column j holds pixel j's weights over its sources; AFA's 0.1 keeps near-empty columns small, not NaN.
    aff = aff / (aff.sum(dim=1, keepdim=True) + 0.1)

    keys, valid = _present_first(cls_labels)
    fg = _gather_channels(cams, keys[:, 1:] - 1)
    scores = torch.cat([torch.full_like(fg[:, :1], bg_thres), fg], dim=1)
    spread = torch.bmm(_masked_softmax(scores, valid).flatten(2), aff).view(b, -1, h, w)  # (B, K, h, w)
    out = cams.new_zeros((b, cls_labels.shape[1] + 1, h, w))
    return out.scatter(1, keys[:, :, None, None].expand_as(spread), spread)


def refine_in_box(par: PAR, images: torch.Tensor, probs: torch.Tensor, cls_labels: torch.Tensor,
                  img_box: Boxes | None = None, down_scale: int = 2) -> torch.Tensor:
    """AFA's `refine_cams_with_cls_label` + argmax: probabilities (B, C+1, H, W), background first ->
    (B, H, W) labels, PAR run on each image's box alone at 1/`down_scale` size; 0 outside the box."""
    b, _, h, w = images.shape
    keys, valid = _present_first(cls_labels)
    probs = _gather_channels(probs, keys)
    label = torch.zeros((b, h, w), dtype=torch.long, device=images.device)
    boxes = _box_list(img_box) if img_box is not None else [(0, h, 0, w)] * b
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        crop = images[i:i + 1, :, y0:y1, x0:x1]
        small = F.interpolate(crop, size=((y1 - y0) // down_scale, (x1 - x0) // down_scale), mode="bilinear",
                              align_corners=False)
        refined = F.interpolate(par(small, probs[i:i + 1, :, y0:y1, x0:x1]), size=crop.shape[2:], mode="bilinear",
                                align_corners=False)
        label[i, y0:y1, x0:x1] = _argmax_label(refined, keys[i:i + 1], valid[i:i + 1])[0]
    return label


def propagated_label(par: PAR, images: torch.Tensor, ms: MultiScaleCAM, cls_labels: torch.Tensor,
                     mask: torch.Tensor | None = None, high_thre: float = 0.55, low_thre: float = 0.35,
                     img_box: Boxes | None = None, ignore_index: int = IGNORE_INDEX, down_scale: int = 2
                     ) -> torch.Tensor:
    """AFA's affinity-propagated pseudo label (its seg target after iteration 6000): the multi-scale
    CAMs, resized to the affinity grid, are propagated with a low and a high background score, resized
    back, refined by PAR inside the boxes and combined as `combine_high_low`. `mask` is
    `radius_mask(*ms.aff_size)`."""
    cams = F.interpolate(ms.cams, size=ms.aff_size, mode="bilinear", align_corners=False)

    def label_with(bg_thres: float) -> torch.Tensor:
        probs = propagate_cams(cams, ms.aff, cls_labels, bg_thres, mask)
        probs = F.interpolate(probs, size=images.shape[2:], mode="bilinear", align_corners=False)
        return refine_in_box(par, images, probs, cls_labels, img_box, down_scale)

    label = combine_high_low(label_with(high_thre), label_with(low_thre), ignore_index)
    return label if img_box is None else ignore_outside_box(label, img_box, ignore_index)


# --- segmentation loss -------------------------------------------------------------------------

def seg_loss(pred: torch.Tensor, label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """AFA's `get_seg_loss`: cross-entropy of (B, C+1, H, W) logits against (B, H, W) labels, averaged
    over background pixels and over foreground pixels separately, then the two averaged, so the usually
    larger background does not dominate. A part with no pixel adds 0 (AFA's would be NaN)."""
    label = label.long()
    ce = F.cross_entropy(pred, label, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    bg, fg = label == 0, (label != 0) & (label != ignore_index)
    return 0.5 * ((ce * bg).sum() / bg.sum().clamp(min=1) + (ce * fg).sum() / fg.sum().clamp(min=1))


# --- helpers -------------------------------------------------------------------------------------

def _present_first(cls_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) multi-hot -> keys (B, K) channel indices into [background, classes] listing each image's
    present channels first (background, always present, at 0), padded with absent ones up to the
    batch's largest count K; valid (B, K) tells them apart."""
    present = F.pad(cls_labels > 0, (1, 0), value=True)  # (B, C+1)
    k = int(present.sum(dim=1).max())
    keys = torch.argsort((~present).to(torch.uint8), dim=1, stable=True)[:, :k]
    return keys, present.gather(1, keys)


def _gather_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w), (B, K) -> (B, K, h, w)."""
    return x.gather(1, index[:, :, None, None].expand(-1, -1, *x.shape[2:]))


def _masked_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~valid[:, :, None, None], float("-inf")).softmax(dim=1)


def _argmax_label(scores: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) compact scores -> (B, H, W) labels in [background, classes] numbering."""
    best = scores.masked_fill(~valid[:, :, None, None], float("-inf")).argmax(dim=1)
    return keys.gather(1, best.flatten(1)).view_as(best)


def _box_list(img_box: Boxes) -> list[tuple[int, int, int, int]]:
    boxes = img_box.tolist() if isinstance(img_box, torch.Tensor) else img_box
    return [tuple(int(v) for v in box) for box in boxes]
