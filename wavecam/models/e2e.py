"""The end-to-end network: AFA (Ru et al., CVPR 2022) on a MiT encoder, with WaveCAM in its
classification branch.

    encoder      MiT, stride (4, 2, 2, 1): stage features at strides 4, 8, 16, 16
    classifier   bias-free 1x1 conv on the last stage after global max pooling -> C-1 foreground logits
    attn_proj    1x1 conv on the last two blocks' symmetrised attention scores -> sigmoid affinity (N x N)
    decoder      SegFormer's all-MLP head -> C-class segmentation logits at stride 4
    wave         WaveModeling on the foreground CAMs; fused with the CAM-weighted class features
    predictor    ClassPredictor on the fused (C-1, D) class representations, softmax cross-entropy

`num_classes` counts the background, as AFA's configs do (21 for VOC, 81 for COCO). Pseudo labels
come from the classifier's CAMs; with `use_wavecam_cams` set, from the product of the predictor's
and the classifier's kernels instead, as make_wavecam does.

The state dict is AFA's `WeTr` (`encoder.*`, `decoder.*`, `attn_proj.*`, `classifier.weight`) plus
`wave.*` and `predictor.*`; `load_wave_afa_weights` loads either, and SegFormer checkpoints of mmseg's
layout (`backbone.*` for the encoder, `decode_head.*` for the decoder, whose names ours keep) into the
encoder and decoder. `load_pretrained` starts a model from NVlabs' ImageNet MiT weights (AFA's start)
or from such a SegFormer checkpoint.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from wavecam.errors import WavecamError
from wavecam.io import load_checkpoint
from wavecam.models.cam import cam_weight, class_features, normalised_cams, wave_features, wave_grid_size
from wavecam.models.checkpoints import as_state_dict, load_weights
from wavecam.models.mit import CONFIGS, load_imagenet_weights, mit, nvlabs_imagenet_key
from wavecam.models.wave import ClassPredictor, WaveModeling

WAVECAM_PARTS = ("wave", "predictor")
MIT_WEIGHTS = ("NVlabs' ImageNet-1k pretrained MiT weights are the files mit_b0.pth .. mit_b5.pth released with "
               "SegFormer (https://github.com/NVlabs/SegFormer, README section 'Training': the weights pretrained "
               "on ImageNet-1K, on Google Drive and OneDrive)")


class _LinearEmbed(nn.Module):
    """(B, C_in, h, w) -> (B, C_out, h, w) by one Linear over channels (SegFormer's `MLP`; the
    attribute `proj` keeps its key)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP decoder: every stage embedded to `embedding_dim`, upsampled to stride 4,
    concatenated, fused by 1x1 conv + BN + ReLU (mmcv's ConvModule: keys `conv`, `bn`), classified."""

    def __init__(self, in_dims: Sequence[int], embedding_dim: int, num_classes: int):
        super().__init__()
        for s in (4, 3, 2, 1):  # SegFormer's registration order
            self.add_module(f"linear_c{s}", _LinearEmbed(in_dims[s - 1], embedding_dim))
        self.linear_fuse = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(4 * embedding_dim, embedding_dim, 1, bias=False),
            bn=nn.BatchNorm2d(embedding_dim),
            activate=nn.ReLU(inplace=True),
        ))
        nn.init.kaiming_normal_(self.linear_fuse.conv.weight, mode="fan_out", nonlinearity="relu")
        self.dropout = nn.Dropout2d(0.1)
        self.linear_pred = nn.Conv2d(embedding_dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Four stage features -> (B, num_classes, H_1, W_1) at the first stage's resolution."""
        size = features[0].shape[2:]
        embedded = [
            F.interpolate(getattr(self, f"linear_c{s}")(features[s - 1]), size=size, mode="bilinear",
                          align_corners=False)
            for s in (4, 3, 2, 1)
        ]
        return self.linear_pred(self.dropout(self.linear_fuse(torch.cat(embedded, dim=1))))


class WaveAFAOutput(NamedTuple):
    logits: torch.Tensor  # (B, C-1) foreground classification logits
    seg: torch.Tensor  # (B, C, H/4, W/4) segmentation logits
    attn_pred: torch.Tensor  # (B, N, N) predicted affinity in (0, 1), N = h*w of the last stage
    wave_loss: torch.Tensor | None  # the predictor's cross-entropy; None without labels
    wave_acc: torch.Tensor | None


class WaveAFA(nn.Module):
    def __init__(self, backbone: str = "mit_b1", num_classes: int = 21, stride: Sequence[int] = (4, 2, 2, 1),
                 embedding_dim: int = 256, pooling: str = "gmp",
                 drop_path_rate: float = 0.1):
        super().__init__()
        if pooling not in ("gmp", "gap"):
            raise ValueError(f"pooling must be 'gmp' or 'gap', got {pooling!r}")
        self.num_classes = num_classes
        self.pooling = pooling
        self.encoder = mit(backbone, stride, drop_path_rate)
        dims = self.encoder.embed_dims
        wave_grid_size(dims[-1])  # fail now, not at the first batch, on a width WaveCAM cannot use (MiT-B0)

        self.decoder = SegFormerHead(dims, embedding_dim, num_classes)
        # Both affinity blocks belong to the last stage, whose scores are square (no spatial reduction).
        self.attn_proj = nn.Conv2d(2 * self.encoder.num_heads[-1], 1, 1, bias=True)
        nn.init.kaiming_normal_(self.attn_proj.weight, a=math.sqrt(5), mode="fan_out")
        self.classifier = nn.Conv2d(dims[-1], num_classes - 1, 1, bias=False)
        self.wave = WaveModeling(num_classes - 1)
        self.predictor = ClassPredictor(num_classes - 1, dims[-1])
        # Switched on by the trainer once the predictor has learnt enough; not saved in the state dict.
        self.use_wavecam_cams = False

    def forward(self, x: torch.Tensor, cls_labels: torch.Tensor | None = None) -> WaveAFAOutput:
        """x (B, 3, H, W), cls_labels (B, C-1) multi-hot; with labels the predictor's loss is computed
        here, so that under DistributedDataParallel every parameter is used inside forward."""
        features, attns = self.encoder(x, return_attn=True)
        last = features[-1]  # (B, D, h, w)
        pool = F.adaptive_max_pool2d if self.pooling == "gmp" else F.adaptive_avg_pool2d
        logits = self.classifier(pool(last, 1)).flatten(1)

        wave_loss = wave_acc = None
        if cls_labels is not None:
            cams = normalised_cams(last, self.classifier.weight)
            fused = class_features(cams, last) + wave_features(self.wave, cams, last.shape[1])  # (B, C-1, D)
            wave_loss, wave_acc = self.predictor(fused, cls_labels)
        return WaveAFAOutput(logits, self.decoder(features), self.affinity(attns), wave_loss, wave_acc)

    def affinity(self, attns: Sequence[torch.Tensor]) -> torch.Tensor:
        """Attention scores of every block -> (B, N, N) affinity from the last two blocks."""
        scores = torch.cat(attns[-2:], dim=1)  # (B, 2 heads, N, N)
        scores = scores + scores.transpose(-2, -1)  # affinity is symmetric; attention is not
        return torch.sigmoid(self.attn_proj(scores))[:, 0]

    def cam_kernel(self) -> torch.Tensor:
        """The (C-1, D, 1, 1) kernel whose response is the CAM used for pseudo labels."""
        return cam_weight(self.classifier.weight, self.predictor.classifier.weight if self.use_wavecam_cams else None)

    def cams_and_affinity(self, x: torch.Tensor, run_decoder: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> raw CAMs (B, C-1, h, w) (no ReLU) and the affinity (B, N, N), N = h*w:
        AFA's `cam_only` forward. That forward runs the decoder too and drops its output, so in
        training its BatchNorm running statistics also take in these inputs (every scale of the
        multi-scale CAMs); `run_decoder` does the same, else the decoder is skipped."""
        features, attns = self.encoder(x, return_attn=True)
        if run_decoder:
            self.decoder(features)
        return F.conv2d(features[-1], self.cam_kernel()), self.affinity(attns)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups as AFA, trainable parameters only: encoder weights at `lr`; the encoder's
        LayerNorms at lr 0 (AFA keeps them at their ImageNet values); classifier, attn_proj, wave and
        predictor at 10x; the decoder at 10x."""
        encoder, norms = [], []
        for name, p in self.encoder.named_parameters():
            (norms if "norm" in name else encoder).append(p)
        heads = [*self.classifier.parameters(), *self.attn_proj.parameters(),
                 *self.wave.parameters(), *self.predictor.parameters()]
        groups = [(encoder, lr, weight_decay), (norms, 0.0, 0.0), (heads, 10 * lr, weight_decay),
                  (self.decoder.parameters(), 10 * lr, weight_decay)]
        return [{"params": [p for p in params if p.requires_grad], "lr": group_lr, "weight_decay": wd}
                for params, group_lr, wd in groups]


class _Parts(nn.Module):
    """Some parts of a WaveAFA (shared with it), loadable on their own: AFA's `WeTr` has all but the
    WaveCAM parts, a SegFormer checkpoint the encoder and decoder."""

    def __init__(self, model: WaveAFA, names: Sequence[str]):
        super().__init__()
        for name in names:
            self.add_module(name, getattr(model, name))


AFA_PARTS = ("encoder", "decoder", "attn_proj", "classifier")
SEGFORMER_PARTS = ("encoder", "decoder")


def segformer_key(key: str) -> str | None:
    """A key of an mmseg / SegFormer checkpoint -> ours: `backbone.*` -> `encoder.*` (NVlabs' MiT
    names, as ours) and `decode_head.*` -> `decoder.*` (SegFormerHead's `linear_c{1..4}.proj`,
    `linear_fuse.conv`, `linear_fuse.bn`, `linear_pred`, as ours). None for what has no place here:
    mmseg's `decode_head.conv_seg.*` (BaseDecodeHead's classifier, which SegFormerHead never calls),
    an `auxiliary_head.*` and an ImageNet `backbone.head.*`. Any other key stays, to be reported."""
    if key.startswith("backbone."):
        rest = nvlabs_imagenet_key(key.removeprefix("backbone."))
        return None if rest is None else "encoder." + rest
    if key.startswith("decode_head."):
        rest = key.removeprefix("decode_head.")
        return None if rest.startswith("conv_seg.") else "decoder." + rest
    return None if key.startswith("auxiliary_head.") else key


def is_segformer(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.removeprefix("module.").startswith(("backbone.", "decode_head.")) for k in state_dict)


def _segformer_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mapped = {}
    for k, v in state_dict.items():
        name = segformer_key(k.removeprefix("module."))
        if name is not None:
            mapped[name] = v
    return mapped


def load_pretrained(model: WaveAFA, path: str | os.PathLike) -> str:
    """Start `model` from `path`: NVlabs' ImageNet MiT weights (the encoder alone, as AFA starts;
    `head.*` dropped) or a SegFormer checkpoint of mmseg's layout (encoder and decoder). A SegFormer
    decoder trained for another number of classes (150 on ADE20K, 19 on Cityscapes) keeps all but its
    classifier `linear_pred`, which stays at its initialisation. Everything else must fit (BadFileError
    listing what does not). Returns one line on what was loaded, for the log."""
    if not Path(path).is_file():
        raise WavecamError(f"pretrained weights not found: {path}. {MIT_WEIGHTS}")
    sd = as_state_dict(load_checkpoint(path), str(path))
    if not is_segformer(sd):
        load_imagenet_weights(model.encoder, sd)
        return f"encoder from {path} (ImageNet MiT weights)"
    mapped = _segformer_state(sd)
    own, theirs = model.decoder.linear_pred, mapped.get("decoder.linear_pred.weight")
    note = ""
    if theirs is not None and theirs.shape != own.weight.shape:
        mapped["decoder.linear_pred.weight"] = own.weight.detach()
        mapped["decoder.linear_pred.bias"] = own.bias.detach()
        note = f"; its {theirs.shape[0]}-class linear_pred left out for this model's {own.weight.shape[0]} classes"
    load_weights(_Parts(model, SEGFORMER_PARTS), mapped)
    return f"encoder and decoder from {path} (SegFormer checkpoint){note}"


def mit_variant(dims: Sequence[int], depths: Sequence[int]) -> str | None:
    """The name (mit_b0 .. mit_b5) of the MiT with these stage widths and block counts, if any."""
    return next((n for n, c in CONFIGS.items() if c.embed_dims == tuple(dims) and c.depths == tuple(depths)), None)


def _shown(variant: str) -> str:
    return "MiT-" + variant.removeprefix("mit_").upper()


def held_network(state_dict: Mapping[str, torch.Tensor]) -> str:
    """One sentence on what a state dict in our names holds, as far as its keys and shapes tell: the
    MiT variant of its encoder and its class count; for the error of a checkpoint that does not fit."""
    if not any(k.startswith("encoder.") for k in state_dict):
        return ("It holds no MiT encoder (no encoder.* or backbone.* keys): it is not a checkpoint of the "
                "end-to-end network (a multi-stage pass's CAM network, say).")
    depths = [len({k.split(".")[2] for k in state_dict if k.startswith(f"encoder.block{s}.")}) for s in range(1, 5)]
    dims = [state_dict[f"encoder.norm{s}.weight"].shape[0] if f"encoder.norm{s}.weight" in state_dict else 0
            for s in range(1, 5)]
    variant = mit_variant(dims, depths)
    if "classifier.weight" in state_dict:
        classes = f" and {state_dict['classifier.weight'].shape[0] + 1} classes"
    elif "decoder.linear_pred.weight" in state_dict:
        classes = f" and {state_dict['decoder.linear_pred.weight'].shape[0]} classes"
    else:
        classes = ""
    if variant is None:
        return f"It holds a MiT encoder of stage widths {dims} and depths {depths}, which is no MiT-B0..B5{classes}."
    return f"It holds a {_shown(variant)} encoder (model.backbone {variant}){classes}."


WEIGHTS_FIX = ("Give a checkpoint written by a run of this config's model.backbone and dataset, or set them to the "
               "checkpoint's (--set model.backbone=...).")


def load_wave_afa_weights(model: WaveAFA, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor], *,
                          name: str | None = None, fix: str = WEIGHTS_FIX) -> tuple[str, ...]:
    """Load one of our checkpoints (strictly), one of AFA's (`wetr_iter_*.pth`, strictly into the
    parts it has, leaving `wave.*` and `predictor.*` as they are) or a SegFormer checkpoint of mmseg's
    layout (strictly into encoder and decoder, class count included). Returns the parts loaded;
    raises BadFileError on a mismatch. The error calls the checkpoint `name` (default: its path, or
    "state dict") and names the network and key layout it was loaded as, what the checkpoint holds
    instead and then `fix`, the way out at the caller's front door: a `_Parts` view's class name
    would tell the user neither the file nor the network."""
    source = name or (str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict")
    sd = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    sd = as_state_dict(sd, source)
    variant = mit_variant(model.encoder.embed_dims, model.encoder.depths)
    network = (f"the end-to-end WaveCAM network on {_shown(variant) if variant else 'MiT'} with "
               f"{model.num_classes} classes")
    if is_segformer(sd):
        mapped = _segformer_state(sd)
        load_weights(_Parts(model, SEGFORMER_PARTS), mapped, name=source, hint=f"{held_network(mapped)} {fix}",
                     network=f"the encoder and decoder of {network}, in mmseg's SegFormer layout "
                             "(backbone.*, decode_head.*)")
        return SEGFORMER_PARTS
    ours = {k.removeprefix("module."): v for k, v in sd.items()}
    parts = AFA_PARTS + WAVECAM_PARTS if any(k.split(".", 1)[0] in WAVECAM_PARTS for k in ours) else AFA_PARTS
    keys = ", ".join(f"{part}.*" for part in parts)
    if parts == AFA_PARTS:
        load_weights(_Parts(model, AFA_PARTS), ours, name=source, hint=f"{held_network(ours)} {fix}",
                     network=f"{network} ({keys}; wave.* and predictor.* may be absent, as in AFA's checkpoints)")
    else:
        load_weights(model, ours, name=source, hint=f"{held_network(ours)} {fix}", network=f"{network} ({keys})")
    return parts
