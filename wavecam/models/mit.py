"""SegFormer's Mix Transformer encoders MiT-B0..B5 (Xie et al., NeurIPS 2021).

Four stages, each an overlapping patch embedding (a strided convolution + LayerNorm), a stack of
blocks and a LayerNorm. A block is efficient self-attention, whose keys and values come from the
tokens reduced `sr_ratio` times by a strided convolution, followed by a Mix-FFN (linear, 3x3
depthwise convolution, GELU, linear). There are no position embeddings.

Parameter names and registration order are those of NVlabs' `mix_transformer.py`, so their released
ImageNet weights (`mit_b1.pth`, ...) load after dropping the `head.*` classifier:

    patch_embed{s}.proj.*  patch_embed{s}.norm.*                            s = 1..4
    block{s}.{i}.norm1.*  .attn.q.*  .attn.kv.*  .attn.proj.*  [.attn.sr.*  .attn.norm.*  if sr_ratio > 1]
    block{s}.{i}.norm2.*  .mlp.fc1.*  .mlp.dwconv.dwconv.*  .mlp.fc2.*
    norm{s}.*
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from wavecam.models.checkpoints import load_weights


@dataclass(frozen=True)
class MiTConfig:
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


CONFIGS = {
    "mit_b0": MiTConfig((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTConfig((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": MiTConfig((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": MiTConfig((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": MiTConfig((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": MiTConfig((64, 128, 320, 512), (3, 6, 40, 3)),
}

# The blocks' and stages' LayerNorms use eps 1e-6; those inside patch embeddings and attention keep
# PyTorch's 1e-5, as in NVlabs' code (their pretrained weights were trained that way).
_BlockNorm = partial(nn.LayerNorm, eps=1e-6)


class OverlapPatchEmbed(nn.Module):
    """(B, C_in, H, W) -> tokens (B, H'W', C) and the new grid (H', W')."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int, return_attn: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, C) on an h x w grid -> (B, N, C), and with `return_attn` the attention scores
        (B, heads, N, N_r), N_r = (h // sr) * (w // sr): the raw q.k products, before scaling and
        softmax, which are what AFA learns affinity from."""
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.num_heads, -1).transpose(1, 2)  # (B, heads, N, c/heads)
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(reduced)  # (B, N_r, C)
        k, v = self.kv(x).view(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)

        if return_attn:
            scores = q @ k.transpose(-2, -1)
            out = (scores * self.scale).softmax(dim=-1) @ v
        else:
            scores, out = None, F.scaled_dot_product_attention(q, k, v)  # same scale, fused kernel
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), scores


class DWConv(nn.Module):
    """3x3 depthwise convolution on tokens; it gives Mix-FFN the positional cue MiT has no embedding for."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = _BlockNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = StochasticDepth(drop_path, mode="row")  # per-sample, as timm's DropPath
        self.norm2 = _BlockNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int, return_attn: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, attn = self.attn(self.norm1(x), h, w, return_attn)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x), h, w)), attn


class MixTransformer(nn.Module):
    """MiT encoder. `stride` is each stage's patch-embedding stride: (4, 2, 2, 2) gives SegFormer's
    feature strides 4, 8, 16, 32; AFA uses (4, 2, 2, 1) to keep the last stage at stride 16."""

    def __init__(self, config: MiTConfig, stride: Sequence[int] = (4, 2, 2, 2), drop_path_rate: float = 0.1):
        super().__init__()
        if len(stride) != 4:
            raise ValueError(f"stride needs one value per stage (4), got {tuple(stride)}")
        self.embed_dims = config.embed_dims
        self.num_heads = config.num_heads
        self.depths = config.depths
        self.stride = tuple(stride)

        in_dims = (3, *config.embed_dims[:3])
        for s in range(4):
            # NVlabs registers all four patch embeddings before any block; the state dict keeps that order.
            self.add_module(f"patch_embed{s + 1}", OverlapPatchEmbed(
                in_dims[s], config.embed_dims[s], patch_size=7 if s == 0 else 3, stride=self.stride[s]))

        # Stochastic depth grows linearly over all blocks of all stages.
        rates = iter(torch.linspace(0, drop_path_rate, sum(config.depths)).tolist())
        for s in range(4):
            dim = config.embed_dims[s]
            self.add_module(f"block{s + 1}", nn.ModuleList(
                Block(dim, config.num_heads[s], config.mlp_ratio, config.sr_ratios[s], next(rates))
                for _ in range(config.depths[s])))
            self.add_module(f"norm{s + 1}", _BlockNorm(dim))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        """(B, 3, H, W) -> the four stage features [(B, C_s, H_s, W_s)]; with `return_attn`,
        (features, attention scores of every block in order, each (B, heads, N, N_r))."""
        features, attns = [], []
        for s in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{s}")(x)
            for block in getattr(self, f"block{s}"):
                x, attn = block(x, h, w, return_attn)
                attns.append(attn)
            x = getattr(self, f"norm{s}")(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            features.append(x)
        return (features, attns) if return_attn else features


def _init_weights(m: nn.Module) -> None:
    # NVlabs' initialisation; conv fan-out counts one group only, so depthwise kernels get std sqrt(2/9).
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def nvlabs_imagenet_key(key: str) -> str | None:
    """A key of NVlabs' ImageNet MiT weights -> ours: the same name; their `head.*` ImageNet
    classifier has no place in an encoder."""
    return None if key.startswith("head.") else key


def mit(name: str = "mit_b1", stride: Sequence[int] = (4, 2, 2, 2), drop_path_rate: float = 0.1) -> MixTransformer:
    """MiT-B0..B5 by name, at random initialisation (`load_imagenet_weights` starts it from NVlabs')."""
    if name not in CONFIGS:
        raise ValueError(f"unknown MiT variant {name!r}; choose from {', '.join(CONFIGS)}")
    return MixTransformer(CONFIGS[name], stride, drop_path_rate)


def load_imagenet_weights(model: MixTransformer, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
    """Load NVlabs' ImageNet MiT weights (or a state dict of ours) into `model`. Their `head.*`
    classifier is dropped; any other mismatch raises a BadFileError listing it."""
    load_weights(model, checkpoint, key_map=nvlabs_imagenet_key)
