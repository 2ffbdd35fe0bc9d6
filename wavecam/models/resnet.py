"""torchvision ResNet-50 with IRN's strides and frozen BatchNorm statistics."""

from __future__ import annotations

import logging
import os

from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from wavecam.io import WavecamError
from wavecam.models.checkpoints import load_weights

log = logging.getLogger(__name__)

# torchvision's name for the weights the paper used (the original "resnet50-19c8e357" release).
IMAGENET = "imagenet"


def build_resnet50(pretrained: str | os.PathLike | None = IMAGENET, strides=(2, 2, 2, 1)) -> nn.Module:
    """ResNet-50 whose conv1, layer2, layer3, layer4 have the given strides (output stride 16 for
    the default), loaded from torchvision's IMAGENET1K_V1 weights (`"imagenet"`), a local
    state-dict file, or left at random initialisation (`None`, with a warning)."""
    net = resnet50(weights=None)
    net.fc = nn.Identity()  # the classifier head is never used; dropping it frees 8 MB
    _set_stride(net.conv1, strides[0])
    for layer, s in zip((net.layer2, net.layer3, net.layer4), strides[1:]):
        _set_stride(layer[0].conv2, s)
        _set_stride(layer[0].downsample[0], s)

    if pretrained is None:
        log.warning("ResNet-50 starts from RANDOM weights: results will be far from the paper's. "
                    "Pass --pretrained imagenet or a path to resnet50 ImageNet weights.")
    else:
        if str(pretrained) == IMAGENET:
            try:
                sd = ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
            except Exception as e:  # offline, proxy, or a corrupt cache
                raise WavecamError(
                    f"could not obtain torchvision's ResNet-50 IMAGENET1K_V1 weights ({e}). Without internet, "
                    "download resnet50-0676ba61.pth elsewhere and pass its path (--pretrained /path/resnet50.pth), "
                    "or place it in $TORCH_HOME/hub/checkpoints/."
                ) from e
        else:
            sd = pretrained
        load_weights(net, sd, key_map=lambda k: None if k.startswith("fc.") else k)
    return net


def _set_stride(conv: nn.Conv2d, s: int) -> None:
    conv.stride = (s, s)


def freeze_bn_stats(module: nn.Module) -> None:
    """Put every BatchNorm in eval mode: IRN/ReCAM train with ImageNet running statistics,
    which matters at their small per-GPU batches. Affine parameters keep training."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
