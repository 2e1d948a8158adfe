"""The tokens a ViT keeps beside its patches (DINOv2's CLS and registers) and how an FAE treats them.

The paper's zero-shot probe (Table 1) feeds FAE-reconstructed DINOv2 features to DINOv2's released
linear head, whose input is ``concat(CLS, mean(patches))``; it does not say where the CLS token of
the reconstruction comes from. ``FAEConfig.extra_tokens`` offers both readings (and today's default):

- ``"none"`` (default; every export written before this option): the FAE knows patches only; a
  head that needs a CLS token cannot be applied to its reconstructions.
- ``"pass_through"``: the FAE still encodes and decodes the patch tokens only; the backbone's own
  CLS / register tokens are carried beside the reconstruction unchanged. Needs the original image
  (it cannot give a CLS token to a *generated* latent). No weights are added.
- ``"reconstruct"``: the CLS / register tokens are decoded *from the latent*: ``count`` learned
  queries attend to the feature decoder's output (one pre-norm cross-attention + SwiGLU block,
  :class:`ExtraTokenDecoder`), so a generated latent gets them too. The encoder and the latent are
  unchanged (the latent grid stays h x w); the extra tokens are standardised by their own
  per-channel statistics and trained with the same per-element L2 as the patches, added to the
  stage-Ia loss (``fae_loss``'s ``rec_extra`` term).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from fae.nn import SwiGLU

ExtraTokens = Literal["none", "pass_through", "reconstruct"]
EXTRA_TOKEN_MODES = ("none", "pass_through", "reconstruct")


class ExtraTokenDecoder(nn.Module):
    """Normalised decoded patch tokens [B, N, D] -> ``count`` normalised extra tokens [B, P, D].

    Args:
        dim: token width D.
        count: P (DINOv2: 1 CLS; with registers 1 + 4).
        heads: attention heads of the cross-attention (must divide D).
    """

    def __init__(self, dim: int, count: int, heads: int):
        super().__init__()
        self.queries = nn.Parameter(0.02 * torch.randn(1, count, dim))  # [1, P, D]
        self.norm_kv = nn.RMSNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.RMSNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(tokens)  # [B, N, D]
        q = self.queries.expand(tokens.shape[0], -1, -1)  # [B, P, D]
        x = q + self.attn(q, kv, kv, need_weights=False)[0]  # [B, P, D]
        x = x + self.mlp(self.norm_mlp(x))  # [B, P, D]
        return self.out(x)  # [B, P, D]


def attention_heads(dim: int, wanted: int) -> int:
    """``wanted`` heads when they divide ``dim``, else the largest divisor of ``dim`` below it."""
    return next(h for h in range(max(1, min(wanted, dim)), 0, -1) if dim % h == 0)
