"""torchvision ResNets with IRN's strides and frozen BatchNorm statistics.

ResNet-50 is the paper's backbone; the other depths serve quick experiments (and the CPU demo).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn
from torchvision import models

from wavecam.errors import WavecamError
from wavecam.models.checkpoints import load_weights

log = logging.getLogger(__name__)

IMAGENET = "imagenet"  # torchvision's IMAGENET1K_V1 weights (for ResNet-50, the ones the paper used)
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
# The reference's module names (`--cam_network net.resnet50_cam`) select the depth too.
_ALIASES = {"net.resnet50_cam": "resnet50", "net.resnet50_irn": "resnet50"}


def resolve_arch(name: str) -> str:
    arch = _ALIASES.get(name, name)
    if arch not in ARCHS:
        raise WavecamError(f"unknown network {name!r}: choose one of {', '.join(ARCHS)} (net.resnet50_cam = resnet50)")
    return arch


def stage_channels(arch: str) -> tuple[int, int, int, int, int]:
    """Output channels of the stem and of layer1..layer4."""
    return (64, 64, 128, 256, 512) if resolve_arch(arch) in ("resnet18", "resnet34") else (64, 256, 512, 1024, 2048)


def build_resnet(arch: str = "resnet50", strides=(2, 2, 2, 1)) -> nn.Module:
    """A torchvision ResNet at random initialisation whose conv1, layer2, layer3, layer4 have the
    given strides (output stride 16 for the default); `load_pretrained` gives it its weights."""
    arch = resolve_arch(arch)
    net = getattr(models, arch)(weights=None)
    net.fc = nn.Identity()  # the ImageNet head is never used
    _set_stride(net.conv1, strides[0])
    for layer, s in zip((net.layer2, net.layer3, net.layer4), strides[1:]):
        block = layer[0]
        # Bottleneck blocks stride in their 3x3 conv2, basic blocks in conv1.
        _set_stride(block.conv2 if isinstance(block, models.resnet.Bottleneck) else block.conv1, s)
        _set_stride(block.downsample[0], s)
    return net


class TorchvisionNames(nn.Module):
    """The ResNet modules of a bigger network under torchvision's names (`conv1`, `bn1`,
    `layer1`..`layer4`), sharing their parameters: a torchvision state dict loads into it as it is."""

    def __init__(self, conv1: nn.Module, bn1: nn.Module, layers: tuple[nn.Module, ...]):
        super().__init__()
        self.conv1, self.bn1 = conv1, bn1
        for i, layer in enumerate(layers, start=1):
            self.add_module(f"layer{i}", layer)


class HasResNet(Protocol):
    arch: str

    def resnet(self) -> nn.Module: ...


def load_pretrained(model: HasResNet, pretrained: str | os.PathLike | Mapping[str, torch.Tensor] | None) -> None:
    """Start the ResNet of `model` (its `resnet()`, under torchvision's names) from torchvision's
    IMAGENET1K_V1 weights (`"imagenet"`), a local state-dict file or dict; `None` keeps the random
    initialisation, with a warning, since results then stay far from the paper's. Networks that are
    given a trained checkpoint next are not passed here: they were built without weights."""
    if pretrained is None:
        log.warning("%s starts from RANDOM weights: results will be far from the paper's. "
                    "Pass --pretrained imagenet or a path to ImageNet weights.", model.arch)
        return
    sd = imagenet_state_dict(model.arch) if str(pretrained) == IMAGENET else pretrained
    load_weights(model.resnet(), sd, key_map=lambda k: None if k.startswith("fc.") else k, network="ResNet")


def imagenet_state_dict(arch: str) -> dict:
    """torchvision's IMAGENET1K_V1 state dict of `arch` (from its cache, else downloaded); where it
    cannot be had, a WavecamError that says how to supply the file by hand."""
    weights = getattr(models, f"ResNet{arch[len('resnet'):]}_Weights").IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # offline, proxy, or a corrupt cache
        file = weights.url.rsplit("/", 1)[-1]
        raise WavecamError(
            f"could not obtain torchvision's {arch} IMAGENET1K_V1 weights ({e}). Without internet, download "
            f"{file} elsewhere and pass its path (--pretrained /path/{file}), "
            "or put it in $TORCH_HOME/hub/checkpoints/."
        ) from e


def _set_stride(conv: nn.Conv2d, s: int) -> None:
    conv.stride = (s, s)


def freeze_bn_stats(module: nn.Module) -> None:
    """Put every BatchNorm in eval mode: IRN/ReCAM train with ImageNet running statistics,
    which matters at their small per-GPU batches. Affine parameters keep training."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
