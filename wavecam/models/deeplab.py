"""Stage 3's fully supervised segmenter: DeepLab-v2 (ResNet-101, ASPP, multi-scale inputs) as
kazuto1011/deeplab-pytorch trains it (`DeepLabV2_ResNet101_MSC`), and torchvision's DeepLab-v3
behind the same interface.

What the reference does, explained once for every caller:
- The backbone's BatchNorms keep the statistics of the weights they start from (`freeze_bn()`
  after `model.train()`), and their affine terms are never updated (`get_params` leaves them out
  of the optimiser). Here they are in eval mode whatever `train()` says and do not require grad.
- Output stride 8: layer3 and layer4 keep their resolution and dilate *every* 3x3 conv by 2 and 4,
  their first block included (torchvision's `replace_stride_with_dilation` gives a layer's first
  block the previous dilation). The stem's max pool rounds up (caffe's pooling), so a 321x321
  crop gives 41x41 logits and a 320x320 one 41x41 too.
- The caffe-converted weights (`deeplabv1_resnet101-coco.pth`, the VOC `deeplabv2_resnet101_msc`
  checkpoints) come from MSRA's ResNet, which strides layer2 in its first 1x1 conv; torchvision's
  ImageNet ResNet strides in the 3x3. They also take different inputs: BGR minus the caffe mean
  (104.008, 116.669, 122.675), unscaled, against torchvision's RGB / 255 normalised by ImageNet's
  mean and std. Both follow the weights (`set_convention`): the model holds them in its state dict
  (`caffe_convention`), so a checkpoint of ours restores them, and `input_norm` / `preprocess`
  give datasets and inference the matching normalisation.
- MSC: in training the outputs are [full scale, each of `scales` (0.5, 0.75) in that order, their
  pixel-wise max], the smaller logits upsampled bilinearly to the full-scale logits for the max
  only; in eval the max alone. Logits stay at stride 8; callers upsample them (bilinear) to the
  image, as the reference's test does.
- The loss is the *sum* over those outputs of the mean cross-entropy (255 ignored), each against
  the labels resized to its size by PIL's nearest neighbour (`resize_labels`). The reference hands
  PIL the size as (H, W) where PIL reads (W, H), which only works for square crops; here it is
  the right way round. A crop whose labels are all ignored gives NaN there as here.
- `param_groups`: backbone conv weights at lr, ASPP weights at 10 lr, ASPP biases at 20 lr
  without weight decay (caffe's lr_mult / decay_mult).

State-dict layouts (DeepLab-v2):
    ours             caffe_convention (); base.backbone.<torchvision ResNet names>;
                     base.aspp.<i>.{weight,bias}
    deeplab-pytorch  [base.]layer1.conv1.{conv,bn}.* (stem);
                     [base.]layer<l+1>.block<b+1>.{reduce,conv3x3,increase,shortcut}.{conv,bn}.*
                     = layer<l>.<b>.{conv1/bn1, conv2/bn2, conv3/bn3, downsample.0/1};
                     base.aspp.c<i>.*; `fc.*` (the COCO init's DeepLab-v1 classifier) is dropped
    torchvision      conv1.*, bn1.*, layer<l>.*, fc.* (dropped): an ImageNet ResNet-101
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from wavecam.classes import IGNORE_INDEX
from wavecam.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pil_nearest_indices
from wavecam.errors import BadFileError, WavecamError
from wavecam.labels.crf import CAFFE_MEAN_BGR
from wavecam.models.checkpoints import load_weights, read_state_dict
from wavecam.models.resnet import IMAGENET, imagenet_state_dict

log = logging.getLogger(__name__)

SEG_NETWORKS = ("deeplabv2_resnet101_msc", "deeplabv3_resnet101")
SEG_BLOCKS = ("bottleneck", "basic")
RESNET101_BLOCKS = (3, 4, 23, 3)
ATROUS_RATES = (6, 12, 18, 24)
MSC_SCALES = (0.5, 0.75)
CAFFE, TORCHVISION = "caffe", "torchvision"
WEIGHTS_HINT = ("Expected one of our segmentation checkpoints, a deeplab-pytorch one (DeepLabV2_ResNet101_MSC or "
                "the deeplabv1_resnet101 init) or a torchvision ResNet-101, for this network and class count.")


# --- input normalisation -------------------------------------------------------------------------

@dataclass(frozen=True)
class InputNorm:
    """How a network's weights want their input: (H, W, 3) RGB in 0..255 -> (3, H, W) float32,
    channels reversed if `bgr`, then (x / divisor - mean) / std. Small and picklable, for datasets
    in loader workers. The mean colour maps to 0 in both conventions, so 0 is the padding."""

    name: str
    bgr: bool
    divisor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        """uint8 (or float in 0..255, e.g. after a resize) RGB (H, W, 3) -> (3, H, W) float32."""
        x = np.asarray(img, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got {x.shape}")
        if self.bgr:
            x = x[..., ::-1]
        x = (x / np.float32(self.divisor) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


CAFFE_BGR = InputNorm(CAFFE, bgr=True, divisor=1.0, mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0))
TORCHVISION_RGB = InputNorm(TORCHVISION, bgr=False, divisor=255.0, mean=tuple(IMAGENET_MEAN.tolist()),
                            std=tuple(IMAGENET_STD.tolist()))
_NORMS = {CAFFE: CAFFE_BGR, TORCHVISION: TORCHVISION_RGB}


# --- DeepLab-v2 ----------------------------------------------------------------------------------

def place_layer2_stride(backbone: nn.Module, in_1x1: bool) -> None:
    """Stride layer2's first block in its 1x1 conv (caffe/MSRA) or in its 3x3 (torchvision). The
    weights are the same shapes either way; only the sampling grid, and so the output, differs.
    Basic blocks have no 1x1 conv: they stride in their first 3x3, and only torchvision's way."""
    block = backbone.layer2[0]
    if isinstance(block, models.resnet.BasicBlock):
        if in_1x1:
            raise WavecamError("caffe-convention (stride in 1x1) weights need bottleneck blocks (--seg_block)")
        return
    block.conv1.stride, block.conv2.stride = ((2, 2), (1, 1)) if in_1x1 else ((1, 1), (2, 2))


class DilatedResNet(nn.Module):
    """A ResNet of torchvision's blocks under torchvision's names, at output stride 8:
    (N, 3, H, W) -> (N, out_channels, h, w). Bottleneck blocks (ResNet-50/101, out_channels 2048)
    are the paper's; basic blocks (ResNet-18/34: n_blocks (2, 2, 2, 2) / (3, 4, 6, 3), 512) take a
    torchvision ResNet-18/34, the CPU demo's. `n_blocks` smaller than ResNet-101's suit quick tests."""

    def __init__(self, n_blocks: Sequence[int] = RESNET101_BLOCKS, stride_in_1x1: bool = False,
                 block: str = "bottleneck"):
        super().__init__()
        if block not in SEG_BLOCKS:
            raise WavecamError(f"unknown ResNet block {block!r}: choose one of {', '.join(SEG_BLOCKS)}")
        basic = block == "basic"
        net = models.resnet.ResNet(models.resnet.BasicBlock if basic else models.resnet.Bottleneck, list(n_blocks))
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)  # caffe rounds the pooled size up
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = 512 if basic else 2048
        for layer, dilation in ((self.layer3, 2), (self.layer4, 4)):
            # Both of a basic block's convs are 3x3 (the first one strided); a bottleneck's middle one.
            (layer[0].conv1 if basic else layer[0].conv2).stride = layer[0].downsample[0].stride = (1, 1)
            for b in layer:
                for conv in (b.conv1, b.conv2) if basic else (b.conv2,):
                    conv.dilation = conv.padding = (dilation, dilation)
        place_layer2_stride(self, stride_in_1x1)

    @property
    def stride_in_1x1(self) -> bool:
        first = self.layer2[0]
        return isinstance(first, models.resnet.Bottleneck) and first.conv1.stride == (2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPP(nn.ModuleList):
    """DeepLab-v2's head: the sum of 3x3 convs (with bias) dilated by each rate, straight to class logits."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = ATROUS_RATES):
        super().__init__(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self:
            nn.init.normal_(conv.weight, mean=0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(conv(x) for conv in self)


class DeepLabV2(nn.Module):
    """Dilated ResNet + ASPP: (N, 3, H, W) -> (N, C, h, w) logits at output stride 8."""

    def __init__(self, num_classes: int, n_blocks: Sequence[int] = RESNET101_BLOCKS,
                 atrous_rates: Sequence[int] = ATROUS_RATES, stride_in_1x1: bool = False, block: str = "bottleneck"):
        super().__init__()
        self.backbone = DilatedResNet(n_blocks, stride_in_1x1, block)
        self.aspp = ASPP(self.backbone.out_channels, num_classes, atrous_rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(self.backbone(x))


# --- the common interface ------------------------------------------------------------------------

class SegNetwork(nn.Module):
    """What every segmenter here offers: in train mode a list of (N, C, h, w) logits for
    `msc_loss`, in eval mode one (N, C, h, w) tensor; `backbone` (torchvision ResNet names, frozen
    BatchNorm) and `head` for `param_groups`; the weights' input convention (`convention`,
    `input_norm`, `preprocess`), kept in the state dict."""

    backbone: nn.Module
    head: nn.Module

    def _init_convention(self, caffe: bool) -> None:
        # A tensor rather than an attribute, so that it travels with the state dict; the hook
        # re-places layer2's stride whenever a state dict (ours) sets it.
        self.register_buffer("caffe_convention", torch.tensor(caffe))
        self.register_load_state_dict_post_hook(_apply_convention_after_load)

    def _freeze_backbone_bn(self) -> None:
        for m in self.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)
        self.train()  # a fresh module would otherwise run its BatchNorms in training mode until train() is called

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    @property
    def convention(self) -> str:
        return CAFFE if bool(self.caffe_convention) else TORCHVISION

    def set_convention(self, name: str) -> None:
        """Switch to the weights' convention: "caffe" (BGR minus the caffe mean; layer2 strided in
        its 1x1) or "torchvision" (ImageNet-normalised RGB; layer2 strided in its 3x3)."""
        if name not in _NORMS:
            raise ValueError(f"unknown input convention {name!r}: {CAFFE} or {TORCHVISION}")
        self.caffe_convention.fill_(name == CAFFE)
        self._apply_convention()

    def _apply_convention(self) -> None:
        place_layer2_stride(self.backbone, in_1x1=self.convention == CAFFE)

    @property
    def input_norm(self) -> InputNorm:
        """The normalisation this network's weights expect (hand it to datasets)."""
        return _NORMS[self.convention]

    def preprocess(self, img: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (3, H, W) float32, normalised for these weights."""
        return self.input_norm(img)

    def reference_base(self) -> DeepLabV2 | None:
        """The module that deeplab-pytorch's DeepLab-v2 `base.*` weights load into, if any."""
        return None


def _apply_convention_after_load(module: SegNetwork, incompatible_keys) -> None:
    module._apply_convention()


class DeepLabV2MSC(SegNetwork):
    """deeplab-pytorch's `MSC(DeepLabV2)`: the base network on the input and on it bilinearly
    resized by each of `scales` (`F.interpolate(scale_factor=s)`, as the reference).

    train: [full scale (N, C, h, w), one (N, C, h_s, w_s) per scale, their max (N, C, h, w)]
    eval:  the max (N, C, h, w); with `scales=()` simply the base network's logits
    """

    def __init__(self, base: DeepLabV2, scales: Sequence[float] = MSC_SCALES):
        super().__init__()
        self.base = base
        self.scales = tuple(scales)
        self._init_convention(caffe=base.backbone.stride_in_1x1)
        self._freeze_backbone_bn()

    @property
    def backbone(self) -> nn.Module:
        return self.base.backbone

    @property
    def head(self) -> nn.Module:
        return self.base.aspp

    def reference_base(self) -> DeepLabV2:
        return self.base

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        logits = self.base(x)
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                   for s in self.scales]
        if not pyramid:
            return [logits] if self.training else logits
        size = logits.shape[-2:]
        upsampled = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.stack([logits, *upsampled]).max(dim=0).values
        return [logits, *pyramid, fused] if self.training else fused


class TorchvisionDeepLabV3(SegNetwork):
    """torchvision's `deeplabv3_resnet101` (no auxiliary head) in this interface: logits at the
    input's size (torchvision upsamples them), `[logits]` in train mode. Its backbone's BatchNorms
    are frozen as DeepLab-v2's are; the head's, new layers, train."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.net = models.segmentation.deeplabv3_resnet101(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        self._init_convention(caffe=False)
        self._freeze_backbone_bn()

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    @property
    def head(self) -> nn.Module:
        return self.net.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        logits = self.net(x)["out"]
        return [logits] if self.training else logits


def build_seg_network(name: str = "deeplabv2_resnet101_msc", num_classes: int = 21,
                      scales: Sequence[float] = MSC_SCALES,
                      n_blocks: Sequence[int] = RESNET101_BLOCKS, block: str = "bottleneck") -> SegNetwork:
    """A segmenter by name (`SEG_NETWORKS`) at random initialisation; `load_pretrained` starts it
    from ImageNet, `load_seg_weights` loads a trained one. `scales` are DeepLab-v2's MSC scales,
    `n_blocks` its blocks per stage (ResNet-101's; fewer make a small network for tests and demos,
    which only a checkpoint of its own shape fits) and `block` their kind ("basic": ResNet-18/34's).
    """
    if name == "deeplabv2_resnet101_msc":
        return DeepLabV2MSC(DeepLabV2(num_classes, n_blocks=tuple(n_blocks), block=block), scales)
    if name == "deeplabv3_resnet101":
        return TorchvisionDeepLabV3(num_classes)
    raise WavecamError(f"unknown segmentation network {name!r}: choose one of {', '.join(SEG_NETWORKS)}")


def load_pretrained(model: SegNetwork, pretrained: str | os.PathLike | Mapping[str, torch.Tensor] | None) -> None:
    """Start a segmenter for training from `pretrained`:
    "imagenet"        torchvision's ResNet-101 IMAGENET1K_V1 backbone (downloaded once), head at init;
    None / "none"     the random initialisation, with a warning;
    a path or dict    see `load_seg_weights`: ours, deeplab-pytorch's, or a torchvision ResNet-101.
    The input convention follows the weights (`model.input_norm`)."""
    if pretrained is None or str(pretrained).lower() == "none":
        log.warning("%s starts from RANDOM weights: results will be far from the paper's.", type(model).__name__)
    elif isinstance(pretrained, (str, os.PathLike)) and str(pretrained) == IMAGENET:
        load_seg_weights(model, imagenet_state_dict("resnet101"))
    else:
        load_seg_weights(model, pretrained)


# --- checkpoints ---------------------------------------------------------------------------------

OURS, DEEPLAB_PYTORCH, TORCHVISION_RESNET = "wavecam", "deeplab-pytorch", "torchvision"

_BRANCHES = {"reduce": ("conv1", "bn1"), "conv3x3": ("conv2", "bn2"), "increase": ("conv3", "bn3"),
             "shortcut": ("downsample.0", "downsample.1")}
_REF_STEM = re.compile(r"layer1\.conv1\.(conv|bn)\.(\w+)")
_REF_BLOCK = re.compile(r"layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(\w+)")
_REF_ASPP = re.compile(r"aspp\.c(\d+)\.(\w+)")


def checkpoint_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """OURS, DEEPLAB_PYTORCH or TORCHVISION_RESNET, from the keys (anything unknown counts as ours,
    so that loading it lists what does not fit)."""
    keys = {k.removeprefix("module.").removeprefix("base.") for k in state_dict}
    if "layer1.conv1.conv.weight" in keys:
        return DEEPLAB_PYTORCH
    if {"conv1.weight", "layer1.0.conv1.weight"} <= keys:
        return TORCHVISION_RESNET
    return OURS


def deeplab_pytorch_key(key: str) -> str | None:
    """A deeplab-pytorch DeepLab-v1/v2 key -> our DeepLabV2 (base) name; None drops the v1
    classifier `fc.*`; an unknown key comes back unchanged, to be reported as unexpected."""
    key = key.removeprefix("base.")
    if m := _REF_STEM.fullmatch(key):
        return f"backbone.{'conv1' if m[1] == 'conv' else 'bn1'}.{m[2]}"
    if m := _REF_BLOCK.fullmatch(key):
        conv, bn = _BRANCHES[m[3]]
        return f"backbone.layer{int(m[1]) - 1}.{int(m[2]) - 1}.{conv if m[4] == 'conv' else bn}.{m[5]}"
    if m := _REF_ASPP.fullmatch(key):
        return f"aspp.{m[1]}.{m[2]}"
    if key.startswith("fc."):
        return None
    return key


def torchvision_resnet_key(key: str) -> str | None:
    """A torchvision ResNet key -> our backbone name; None drops the ImageNet classifier `fc.*`."""
    return None if key.startswith("fc.") else "backbone." + key


def load_seg_weights(model: SegNetwork, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> str:
    """Load a checkpoint into `model`, its layout told by its keys (`checkpoint_layout`):

    ours             everything, input convention included, strictly;
    deeplab-pytorch  backbone (and ASPP if it has one: DeepLabV2_ResNet101_MSC's `base.*`; the
                     DeepLab-v1 COCO init has a classifier in its place, dropped, and the ASPP keeps
                     its initialisation, as the reference's `strict=False` load leaves it); caffe
                     convention;
    torchvision      an ImageNet ResNet-101 into the backbone; the head keeps its initialisation;
                     torchvision convention.
    A file that does not fit raises BadFileError listing the missing, unexpected and mismatched
    keys. BatchNorm counters (`num_batches_tracked`, absent from checkpoints older than PyTorch
    0.4.1) are not required. Returns the layout."""
    source, sd = read_state_dict(checkpoint)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    layout = checkpoint_layout(sd)
    if layout == OURS:
        load_weights(model, _with_batch_counters(sd, model), name=source, hint=WEIGHTS_HINT)
        return layout

    key_map = deeplab_pytorch_key if layout == DEEPLAB_PYTORCH else torchvision_resnet_key
    mapped = {name: v for k, v in sd.items() if (name := key_map(k)) is not None}
    target: nn.Module | None
    if any(k.startswith("aspp.") for k in mapped):
        target = model.reference_base()
        if target is None:
            raise BadFileError(f"{source}: a deeplab-pytorch DeepLab-v2 checkpoint (aspp.c*) does not fit "
                               f"{type(model).__name__}; load it into deeplabv2_resnet101_msc")
    else:
        target = model.backbone
        mapped = {k.removeprefix("backbone."): v for k, v in mapped.items()}
        log.info("%s: backbone weights only (%s); the head starts from its initialisation", source, layout)
    load_weights(target, _with_batch_counters(mapped, target), name=source, hint=WEIGHTS_HINT)
    model.set_convention(CAFFE if layout == DEEPLAB_PYTORCH else TORCHVISION)
    return layout


def _with_batch_counters(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`state_dict` plus the model's own `num_batches_tracked` where it has a BatchNorm's
    statistics but no counter (BatchNorm's own loader tolerates that too; frozen statistics never
    read it)."""
    out = dict(state_dict)
    for k, v in model.state_dict().items():
        prefix = k.removesuffix("num_batches_tracked")
        if prefix != k and k not in out and prefix + "running_mean" in out:
            out[k] = v
    return out


# --- training ------------------------------------------------------------------------------------

def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) integer labels -> (N, h, w) int64, PIL's nearest neighbour (the reference's
    `resize_labels`), on the labels' device."""
    h, w = size
    labels = labels.long()
    if labels.shape[-2:] == (h, w):
        return labels
    rows = torch.from_numpy(pil_nearest_indices(labels.shape[-2], h)).to(labels.device)
    cols = torch.from_numpy(pil_nearest_indices(labels.shape[-1], w)).to(labels.device)
    return labels.index_select(-2, rows).index_select(-1, cols)


def msc_loss(logits: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor,
             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The sum over the outputs of their mean cross-entropy against `labels` (N, H, W) resized to
    each output's size, as the reference's training loop (which then divides by its ITER_SIZE
    for gradient accumulation: the loop's business)."""
    outputs = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    return sum(F.cross_entropy(out, resize_labels(labels, out.shape[-2:]), ignore_index=ignore_index)
               for out in outputs)


def param_groups(model: SegNetwork, lr: float, weight_decay: float) -> list[dict]:
    """SGD parameter groups, as the reference's `get_params` and train.prototxt's lr_mult/decay_mult:

    "1x"   backbone conv weights                      lr,      weight_decay
    "10x"  head conv weights                          10 lr,   weight_decay
    "20x"  head conv biases                           20 lr,   no decay
    "10x_norm"  head normalisation layers (DeepLab-v3's head only)   10 lr, no decay

    The backbone's BatchNorms are frozen and belong to none. Every trainable parameter must fall in
    a group: a new module left out would silently never train, so that raises instead."""
    def conv_params(module: nn.Module, attr: str) -> list[nn.Parameter]:
        return [getattr(m, attr) for m in module.modules()
                if isinstance(m, nn.Conv2d) and getattr(m, attr) is not None and getattr(m, attr).requires_grad]

    backbone = conv_params(model.backbone, "weight")
    head_w, head_b = conv_params(model.head, "weight"), conv_params(model.head, "bias")
    taken = {id(p) for p in backbone + head_w + head_b}
    head_norm = [p for p in model.head.parameters() if p.requires_grad and id(p) not in taken]
    taken |= {id(p) for p in head_norm}
    left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in taken]
    if left:
        raise ValueError(f"parameters in no group (they would never train): {', '.join(left[:8])}")
    groups = [
        {"name": "1x", "params": backbone, "lr": lr, "weight_decay": weight_decay},
        {"name": "10x", "params": head_w, "lr": 10 * lr, "weight_decay": weight_decay},
        {"name": "20x", "params": head_b, "lr": 20 * lr, "weight_decay": 0.0},
    ]
    if head_norm:
        groups.append({"name": "10x_norm", "params": head_norm, "lr": 10 * lr, "weight_decay": 0.0})
    return groups
