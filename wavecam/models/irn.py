"""IRN (Ahn et al., CVPR 2019): class-boundary and displacement heads on a frozen ResNet-50.

Module names follow IRN's `net/resnet50_irn.py` (`stage1..5`, `fc_edge1..6`, `fc_dp1..7`), so
state dicts move between the two code bases; IRN's extra aliases of the same tensors
(`resnet50.*`, `backbone.*`, `edge_layers.*`, `dp_layers.*`, `mean_shift.*`) are mapped back on
load by `load_irn_weights`, and our state dict loads into IRN's network as is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from wavecam.labels.randomwalk import PathIndex, edge_to_affinity
from wavecam.models import resnet
from wavecam.models.checkpoints import load_weights

EPS = 1e-5  # IRN's guard inside logs and label-weighted means


class MeanShift(nn.Module):
    """Subtracts the mean displacement measured after training (IRN's centring); identity while training."""

    def __init__(self, num_features: int = 2):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


def _head(c_in: int, c_out: int, groups: int, upsample: int = 1) -> nn.Sequential:
    # Conv stays at index 0 and GroupNorm at 1: IRN's checkpoints are keyed by these positions.
    layers = [nn.Conv2d(c_in, c_out, 1, bias=False), nn.GroupNorm(groups, c_out)]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _crop_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    # Upsampled coarse maps can be a pixel larger than the stride-4 map when sizes are odd.
    return x[..., : ref.shape[2], : ref.shape[3]]


class IRNet(nn.Module):
    """forward(image (B, 3, H, W)) -> (boundary logits (B, 1, h, w), displacement (B, 2, h, w)),
    h, w = the stride-4 feature size. The backbone is frozen: no gradients, BatchNorm in eval."""

    def __init__(self, arch: str = "resnet50"):
        super().__init__()
        self.arch = resnet.resolve_arch(arch)
        net = resnet.build_resnet(self.arch, strides=(2, 2, 2, 1))
        # ResNet-50's channels: 64, 256, 512, 1024, 2048 at strides 4, 4, 8, 16, 16
        c1, c2, c3, c4, c5 = resnet.stage_channels(arch)
        self.stage1 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stage2 = nn.Sequential(net.layer1)
        self.stage3 = nn.Sequential(net.layer2)
        self.stage4 = nn.Sequential(net.layer3)
        self.stage5 = nn.Sequential(net.layer4)
        for stage in self.backbone_stages():
            stage.requires_grad_(False)

        # class-boundary branch: every level to 32 channels at stride 4, fused to one logit
        self.fc_edge1 = _head(c1, 32, 4)
        self.fc_edge2 = _head(c2, 32, 4)
        self.fc_edge3 = _head(c3, 32, 4, upsample=2)
        self.fc_edge4 = _head(c4, 32, 4, upsample=4)
        self.fc_edge5 = _head(c5, 32, 4, upsample=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)

        # displacement branch: deep levels fused at stride 8, then with shallow ones at stride 4
        self.fc_dp1 = _head(c1, 64, 8)
        self.fc_dp2 = _head(c2, 128, 16)
        self.fc_dp3 = _head(c3, 256, 16)
        self.fc_dp4 = _head(c4, 256, 16, upsample=2)
        self.fc_dp5 = _head(c5, 256, 16, upsample=2)
        self.fc_dp6 = _head(768, 256, 16, upsample=2)
        self.fc_dp7 = nn.Sequential(*_head(448, 256, 16), nn.Conv2d(256, 2, 1, bias=False), MeanShift(2))

    def backbone_stages(self) -> tuple[nn.Module, ...]:
        return (self.stage1, self.stage2, self.stage3, self.stage4, self.stage5)

    def resnet(self) -> resnet.TorchvisionNames:
        """The frozen backbone under torchvision's names, for `resnet.load_pretrained`."""
        return resnet.TorchvisionNames(self.stage1[0], self.stage1[1], (self.stage2[0], self.stage3[0],
                                                                        self.stage4[0], self.stage5[0]))

    def edge_layers(self) -> tuple[nn.Module, ...]:
        return (self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4, self.fc_edge5, self.fc_edge6)

    def dp_layers(self) -> tuple[nn.Module, ...]:
        return (self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4, self.fc_dp5, self.fc_dp6, self.fc_dp7)

    @property
    def mean_shift(self) -> MeanShift:
        return self.fc_dp7[-1]

    def trainable_parameters(self) -> tuple[tuple[nn.Parameter, ...], tuple[nn.Parameter, ...]]:
        """(boundary-branch, displacement-branch) parameters: IRN trains them at lr and 10 x lr."""
        edge = tuple(p for m in self.edge_layers() for p in m.parameters())
        dp = tuple(p for m in self.dp_layers() for p in m.parameters())
        return edge, dp

    def train(self, mode: bool = True) -> IRNet:
        super().train(mode)
        for stage in self.backbone_stages():
            stage.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            x1 = self.stage1(x)
            x2 = self.stage2(x1)
            x3 = self.stage3(x2)
            x4 = self.stage4(x3)
            x5 = self.stage5(x4)

        e2 = self.fc_edge2(x2)
        e3, e4, e5 = (_crop_to(head(feat), e2) for head, feat in
                      ((self.fc_edge3, x3), (self.fc_edge4, x4), (self.fc_edge5, x5)))
        edge_out = self.fc_edge6(torch.cat([self.fc_edge1(x1), e2, e3, e4, e5], dim=1))

        d2, d3 = self.fc_dp2(x2), self.fc_dp3(x3)
        deep = torch.cat([d3, _crop_to(self.fc_dp4(x4), d3), _crop_to(self.fc_dp5(x5), d3)], dim=1)  # stride 8
        up = _crop_to(self.fc_dp6(deep), d2)
        dp_out = self.fc_dp7(torch.cat([self.fc_dp1(x1), d2, up], dim=1))
        return edge_out, dp_out


class EdgeDisplacement(IRNet):
    """make_sem_seg's inference: forward(image) -> (boundary probability (h, w), displacement (2, h, w)).

    `image` is (3, H, W), or (2, 3, H, W) holding the image and its horizontal flip (IRN's
    loader layout). The boundary logits of the two views are averaged before the sigmoid.

    With `pad_to_crop`, the image is first zero-padded to `crop_size` at the bottom/right, as IRN's
    own `EdgeDisplacement` does. ReCAM (and so WaveCAM) comments that pad out, hence the default.
    It is not a border detail: the heads' GroupNorm normalises over the whole map, so the padding
    shifts every pixel's boundary score.
    """

    def __init__(self, crop_size: int = 512, stride: int = 4, arch: str = "resnet50", pad_to_crop: bool = False):
        super().__init__(arch)
        self.crop_size = crop_size
        self.stride = stride
        self.pad_to_crop = pad_to_crop

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, crop_size: int = 512, stride: int = 4,
                        arch: str = "resnet50", pad_to_crop: bool = False) -> EdgeDisplacement:
        """An eval-mode network holding the weights of an IRN checkpoint (ours or IRN's)."""
        model = cls(crop_size=crop_size, stride=stride, arch=arch, pad_to_crop=pad_to_crop)
        load_irn_weights(model, path)
        return model.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim == 3:
            image = torch.stack([image, image.flip(-1)])
        if image.ndim != 4 or image.shape[:2] != (2, 3):
            raise ValueError(f"expected an image (3, H, W) or image + flip (2, 3, H, W), got {tuple(image.shape)}")
        height, width = image.shape[2:]
        h, w = (height - 1) // self.stride + 1, (width - 1) // self.stride + 1
        if self.pad_to_crop:
            # Larger images than the crop are run as they are, rather than cut as IRN would.
            image = F.pad(image, [0, max(self.crop_size - width, 0), 0, max(self.crop_size - height, 0)])
        edge_out, dp_out = super().forward(image)
        edge_out, dp_out = edge_out[..., :h, :w], dp_out[..., :h, :w]
        edge = torch.sigmoid(edge_out[0, 0] / 2 + edge_out[1, 0].flip(-1) / 2)
        return edge, dp_out[0]


class AffinityDisplacementLoss(nn.Module):
    """IRN's training losses from the network outputs and the pair labels of `randomwalk.affinity_labels`.

    forward(edge_logits (B, 1, h, w), dp (B, 2, h, w), bg_pos, fg_pos, neg (B, D, S)) -> dict of
    scalars: `bg_pos_aff`, `fg_pos_aff`, `pos_aff` (their mean), `neg_aff`, `dp_fg`, `dp_bg` and
    `total` = (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2, as IRN's train_irn.
    """

    def __init__(self, path_index: PathIndex):
        super().__init__()
        self.feature_size = path_index.feature_size
        self.n_paths = len(path_index.path_indices)
        # Derived from the path index, so not saved in state dicts.
        for i, idx in enumerate(path_index.path_indices):
            self.register_buffer(f"path_indices{i}", torch.from_numpy(idx), persistent=False)
        self.register_buffer("src_indices", torch.from_numpy(path_index.src_indices), persistent=False)
        self.register_buffer("dst_indices", torch.from_numpy(path_index.dst_indices), persistent=False)
        # A foreground pair (p, p + d) on one instance should satisfy disp(p) - disp(p + d) = d.
        target = torch.from_numpy(path_index.search_dst).float().T  # (2, D), (dy, dx) as the dp channels
        self.register_buffer("disp_target", target[None, :, :, None], persistent=False)  # (1, 2, D, 1)

    def path_indices(self) -> list[torch.Tensor]:
        return [getattr(self, f"path_indices{i}") for i in range(self.n_paths)]

    def pair_displacement(self, dp: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w) -> (B, 2, D, S): displacement at each source minus that at its destination."""
        flat = dp.flatten(2)
        return flat[:, :, self.src_indices][:, :, None, :] - flat[:, :, self.dst_indices]

    def forward(self, edge_logits, dp, bg_pos, fg_pos, neg) -> dict[str, torch.Tensor]:
        if tuple(edge_logits.shape[2:]) != self.feature_size or tuple(dp.shape[2:]) != self.feature_size:
            raise ValueError(f"outputs {tuple(edge_logits.shape[2:])} do not match the path index "
                             f"size {self.feature_size}: build PathIndex for crop_size // 4")
        aff = edge_to_affinity(torch.sigmoid(edge_logits.float()), self.path_indices())  # (B, D, S)
        pos_aff_map = -torch.log(aff + EPS)
        neg_aff_map = -torch.log(1 + EPS - aff)
        out = {
            "bg_pos_aff": _masked_mean(pos_aff_map, bg_pos),
            "fg_pos_aff": _masked_mean(pos_aff_map, fg_pos),
            "neg_aff": _masked_mean(neg_aff_map, neg),
        }
        out["pos_aff"] = (out["bg_pos_aff"] + out["fg_pos_aff"]) / 2

        pair = self.pair_displacement(dp.float())
        # Each pair has two displacement components, hence the 2 in IRN's normaliser.
        out["dp_fg"] = _masked_mean((pair - self.disp_target).abs(), fg_pos[:, None], scale=2)
        out["dp_bg"] = _masked_mean(pair.abs(), bg_pos[:, None], scale=2)
        out["total"] = (out["pos_aff"] + out["neg_aff"]) / 2 + (out["dp_fg"] + out["dp_bg"]) / 2
        return out


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, scale: float = 1) -> torch.Tensor:
    return (values * mask).sum() / (scale * mask.sum() + EPS)


# IRN registers the same modules under several names; each alias maps to our one name.
_ALIASES = [
    (re.compile(r"^resnet50\.conv1\."), lambda m: "stage1.0."),
    (re.compile(r"^resnet50\.bn1\."), lambda m: "stage1.1."),
    (re.compile(r"^resnet50\.layer(\d)\."), lambda m: f"stage{int(m[1]) + 1}.0."),
    (re.compile(r"^backbone\.(\d)\."), lambda m: f"stage{int(m[1]) + 1}."),
    (re.compile(r"^edge_layers\.(\d)\."), lambda m: f"fc_edge{int(m[1]) + 1}."),
    (re.compile(r"^dp_layers\.(\d)\."), lambda m: f"fc_dp{int(m[1]) + 1}."),
    (re.compile(r"^mean_shift\."), lambda m: "fc_dp7.4."),
]
# Buffers of IRN's loss module (saved with its weights) and a classifier IRN's backbone may carry.
_DROPPED = re.compile(r"^(path_indices\d+|disp_target|resnet50\.fc\.)")


def irn_key_map(key: str) -> str | None:
    """An IRN (or our) state-dict key -> our module name, None for keys that carry no weights of ours."""
    if _DROPPED.match(key):
        return None
    for pattern, repl in _ALIASES:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return key


def load_irn_weights(model: IRNet, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                     strict: bool = True) -> tuple[list[str], list[str]]:
    """Load IRN's `res50_irn.pth` or ours into `model`; BadFileError lists keys that do not fit."""
    return load_weights(model, checkpoint, key_map=irn_key_map, strict=strict)
