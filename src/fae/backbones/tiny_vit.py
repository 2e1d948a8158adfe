"""A tiny, randomly initialised but seeded ViT: a real backbone for fast tests and dry runs.

Same parameters on every machine and every call (built under a fixed seed in a forked RNG, so the
caller's random state is untouched). Default: 32 px input, patch 8 -> 4x4 tokens of width 64.
"""
from __future__ import annotations

import torch
from torch import nn

from fae.backbones.base import Backbone, BackboneInfo
from fae.nn import TransformerBlock

TINY_VIT_SEED = 0


class TinyViT(Backbone):
    """Patch embedding + learned positions + ``depth`` ViT blocks + final LayerNorm.

    Args:
        info: registry entry (dim, resolution, patch_size define the network).
        depth: number of transformer blocks.
        heads: attention heads.
        seed: initialisation seed (fixed, so the "pretrained" features are reproducible).
    """

    def __init__(self, info: BackboneInfo, depth: int = 2, heads: int = 4, seed: int = TINY_VIT_SEED):
        super().__init__()
        self.info = info
        h, w = info.grid
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.patch_embed = nn.Conv2d(3, info.dim, kernel_size=info.patch_size, stride=info.patch_size)
            self.pos_embed = nn.Parameter(0.02 * torch.randn(1, h * w, info.dim))
            self.blocks = nn.ModuleList(TransformerBlock(info.dim, heads, style="vit") for _ in range(depth))
            self.norm = nn.LayerNorm(info.dim, eps=1e-6)
        self.freeze()

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # [B, N, D]
        x = x + self.pos_embed  # [B, N, D]
        for block in self.blocks:
            x = block(x)  # [B, N, D]
        return self.norm(x)  # [B, N, D]
