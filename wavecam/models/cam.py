"""CAM networks on ResNet-50: the classification net of train_cam and the fine-tuned net of
train_recam / train_wavecam (WaveCAMNet, with or without the wave module).

State-dict layout (ours, and the canonical names of ReCAM/IRN's `resnet50_cam.Net`):

    stage1.0.*  conv1        stage1.1.*  bn1        stage1.4.<i>.*  layer1 blocks
    stage2.0.<i>.*  layer2   stage3.0.<i>.*  layer3   stage4.0.<i>.*  layer4
    classifier.weight  (C, 2048, 1, 1)
    wave.*  (WaveCAMNet with its wave module only: the WaveModeling parameters)

ReCAM's nets also register the same tensors as `resnet50.*` (torchvision names), `backbone.<stage-1>.*`
and `newly_added.0.*`; `reference_key` maps any of those aliases to the names above, and
`to_reference_layout` writes them back so their code can load our checkpoints strictly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from wavecam.io import load_checkpoint
from wavecam.models.checkpoints import load_weights
from wavecam.models.resnet import TorchvisionNames, build_resnet, freeze_bn_stats, resolve_arch, stage_channels
from wavecam.models.wave import WaveModeling

CAM_PARTS = ("stage1", "stage2", "stage3", "stage4", "classifier")


class CAMNet(nn.Module):
    """ResNet-50 (output stride 16) + a bias-free 1x1 classifier on globally pooled features."""

    def __init__(self, num_classes: int = 20, strides=(2, 2, 2, 1), freeze_bn: bool = True, arch: str = "resnet50"):
        super().__init__()
        self.arch = resolve_arch(arch)
        net = build_resnet(self.arch, strides)
        self.num_classes = num_classes
        # Frozen statistics presuppose trained ones: a network started from random weights must
        # learn them (the reference always starts from ImageNet).
        self.freeze_bn = freeze_bn
        self.stage1 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.stage2 = nn.Sequential(net.layer2)
        self.stage3 = nn.Sequential(net.layer3)
        self.stage4 = nn.Sequential(net.layer4)
        self.classifier = nn.Conv2d(stage_channels(arch)[-1], num_classes, 1, bias=False)
        # The stem stays at its ImageNet weights, as in IRN/ReCAM.
        for p in (*net.conv1.parameters(), *net.bn1.parameters()):
            p.requires_grad_(False)
        self.train()  # a fresh module would otherwise run its BatchNorms in training mode until train() is called

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 2048, ceil(H/16), ceil(W/16)) for the default strides."""
        return self.stage4(self.stage3(self.stage2(self.stage1(x))))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(features, 1)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))

    def train(self, mode: bool = True):
        super().train(mode)
        # Only the backbone's BatchNorms keep ImageNet statistics; a subclass's new modules train normally.
        if self.freeze_bn:
            for stage in self.backbone_stages():
                freeze_bn_stats(stage)
        return self

    def backbone_stages(self) -> tuple[nn.Module, ...]:
        return self.stage1, self.stage2, self.stage3, self.stage4

    def resnet(self) -> TorchvisionNames:
        """The backbone under torchvision's names, for `resnet.load_pretrained`."""
        return TorchvisionNames(self.stage1[0], self.stage1[1], (self.stage1[4], self.stage2[0], self.stage3[0],
                                                                 self.stage4[0]))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone, classifier) trainable parameters, for the 1x and 10x learning rates."""
        backbone = [p for s in self.backbone_stages() for p in s.parameters() if p.requires_grad]
        return backbone, [p for p in self.classifier.parameters() if p.requires_grad]


class WaveCAMNet(CAMNet):
    """CAMNet + WaveModeling: each present class's CAM-weighted feature is fused with the wave
    representation of the CAMs. State-dict compatible with CAMNet apart from `wave.*`.

    `wave=False` builds no wave module and fuses nothing: the class representations are the
    CAM-weighted features alone, ReCAM's `Net_CAM_Feature`. ReCAM and WaveCAM differ in that one
    module, so one class with a switch keeps them from drifting apart.
    """

    def __init__(self, num_classes: int = 20, strides=(2, 2, 2, 1), freeze_bn: bool = True, arch: str = "resnet50",
                 wave: bool = True):
        super().__init__(num_classes, strides, freeze_bn, arch)
        self.wave = WaveModeling(num_classes) if wave else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (logits (B, C), fused class representations (B, C, 2048))."""
        f = self.features(x)
        cams = normalised_cams(f, self.classifier.weight)
        fused = class_features(cams, f)
        if self.wave is not None:
            fused = fused + self.wave_features(cams)
        return self.logits(f), fused

    def wave_features(self, cams: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) normalised CAMs -> (B, C, 2048): see `wave_features`."""
        return wave_features(self.wave, cams, self.classifier.in_channels)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone + classifier, wave) trainable parameters, for the 0.1x and 1x learning rates
        (the wave list is empty without the module)."""
        backbone, classifier = super().param_groups()
        wave = [] if self.wave is None else [p for p in self.wave.parameters() if p.requires_grad]
        return backbone + classifier, wave


def normalised_cams(features: torch.Tensor, classifier_weight: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w), (C, D, 1, 1) -> (B, C, h, w) ReLU'd CAMs, each divided by its maximum."""
    cams = F.relu(F.conv2d(features, classifier_weight))
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5)


def wave_grid_size(dim: int) -> int:
    """The side g of the grid the wave module runs on, so that its 2C x g x g output gives C rows of `dim`."""
    g = math.isqrt(dim // 2)
    if 2 * g * g != dim:
        raise ValueError(f"feature width {dim} is not 2*g*g for an integer grid size g; WaveCAM cannot use it")
    return g


def wave_features(wave: WaveModeling, cams: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, C, h, w) normalised CAMs -> (B, C, dim): the wave output on a g x g grid with 2 g^2 = dim
    (g = 32 for ResNet-50's 2048 channels, 16 for MiT's 512)."""
    b, c = cams.shape[:2]
    g = wave_grid_size(dim)
    grid = F.interpolate(cams, size=(g, g), mode="bilinear", align_corners=False)
    # A plain reshape of (B, 2C, g, g): class k takes channels 2k and 2k+1, as in the paper's code.
    return wave(grid).reshape(b, c, dim)


def class_features(cams: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of cams[b, k] * features[b]: (B, C, h, w), (B, D, h, w) -> (B, C, D),
    as one batched matmul rather than ReCAM's (B, C, D, h*w) product."""
    hw = cams.shape[2] * cams.shape[3]
    return torch.bmm(cams.flatten(2), features.flatten(2).transpose(1, 2)) / hw


def cam_weight(classifier_weight: torch.Tensor, predictor_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The 1x1 kernel (C, D, 1, 1) whose response is the CAM: the classifier's (make_cam) or its
    element-wise product with the predictor's (make_recam / make_wavecam, as ReCAM's VOC make_recam)."""
    if predictor_weight is None:
        return classifier_weight
    return predictor_weight * classifier_weight


# --- checkpoints -------------------------------------------------------------------------------

# torchvision ResNet names (ReCAM's `resnet50.*` aliases) -> ours.
_FROM_TORCHVISION = {
    "conv1.": "stage1.0.", "bn1.": "stage1.1.", "layer1.": "stage1.4.",
    "layer2.": "stage2.0.", "layer3.": "stage3.0.", "layer4.": "stage4.0.",
}


def reference_key(key: str) -> str | None:
    """Map a ReCAM/IRN CAM-net key to ours (our own keys map to themselves); None drops it."""
    head, _, rest = key.partition(".")
    if head == "resnet50":
        return _replace_prefix(rest, _FROM_TORCHVISION)  # None for the unused ImageNet head `fc.*`
    index, _, tail = rest.partition(".")
    if head == "backbone" and index.isdigit():
        return f"stage{int(index) + 1}.{tail}"
    if head == "newly_added":
        return "classifier." + tail
    return key


def to_reference_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ReCAM's alias keys to one of our CAMNet state dicts, so ReCAM's `Net`/`CAM` load it strictly."""
    to_torchvision = {ours: tv for tv, ours in _FROM_TORCHVISION.items()}
    out = dict(state_dict)
    for k, v in state_dict.items():
        if k.startswith("stage"):
            out[f"backbone.{int(k[5]) - 1}.{k[7:]}"] = v
            out[f"resnet50.{_replace_prefix(k, to_torchvision)}"] = v
        elif k.startswith("classifier."):
            out["newly_added.0." + k[len("classifier."):]] = v
    return out


def _replace_prefix(key: str, prefixes: Mapping[str, str]) -> str | None:
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None


class _BackboneAndClassifier(nn.Module):
    """A CAM net's backbone and classifier, shared with it, loadable on their own."""

    def __init__(self, model: CAMNet):
        super().__init__()
        for name in CAM_PARTS:
            self.add_module(name, getattr(model, name))


def load_cam_weights(model: CAMNet, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                     cam_only: bool = False) -> None:
    """Load a checkpoint in our layout or ReCAM/IRN's into `model`.

    With `cam_only`, only the backbone and classifier are loaded (strictly) and any other entries on
    either side, such as `wave.*`, are left alone: res50_cam.pth into a WaveCAMNet for train_wavecam,
    or a WaveCAM checkpoint into a CAMNet for make_wavecam. Raises BadFileError listing the missing,
    unexpected and mismatched keys when the checkpoint does not fit.
    """
    target: nn.Module = _BackboneAndClassifier(model) if cam_only else model

    def key_map(k: str) -> str | None:
        name = reference_key(k)
        if cam_only and name is not None and name.split(".", 1)[0] not in CAM_PARTS:
            return None
        return name

    load_weights(target, checkpoint, key_map=key_map)



def torchvision_backbone(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ResNet-50 of a CAM checkpoint (ours or ReCAM's) under torchvision's names, for
    `resnet.load_pretrained`: lets IRN start from the trained CAM backbone when no
    ImageNet weights are at hand."""
    sd = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    ours = {}
    for k, v in sd.items():
        name = reference_key(k)
        if name is not None and name.startswith("stage"):
            ours.setdefault(name, v)
    to_torchvision = {v: k for k, v in _FROM_TORCHVISION.items()}
    return {_replace_prefix(k, to_torchvision): v for k, v in ours.items()}
