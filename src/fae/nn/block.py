"""The pre-norm transformer block every non-diffusion transformer in FAE is made of.

``TransformerBlock(dim, heads, style="lightning")`` = RMSNorm + SwiGLU (+ RoPE passed at call time),
the LightningDiT block without adaLN, used by the feature decoder; ``style="vit"`` = LayerNorm +
GELU MLP, the plain ViT block used by the pixel decoder.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from fae.nn.attention import Attention, KVCache
from fae.nn.mlp import Mlp, SwiGLU

BlockStyle = Literal["vit", "lightning"]


def make_norm(kind: Literal["layer", "rms"], dim: int, affine: bool = True) -> nn.Module:
    if kind == "rms":
        return nn.RMSNorm(dim, eps=1e-6, elementwise_affine=affine)
    return nn.LayerNorm(dim, eps=1e-6, elementwise_affine=affine)


def make_mlp(kind: Literal["gelu", "swiglu"], dim: int, ratio: float = 4.0) -> nn.Module:
    return SwiGLU(dim, ratio) if kind == "swiglu" else Mlp(dim, ratio)


class TransformerBlock(nn.Module):
    """x + Attn(Norm(x)); x + MLP(Norm(x)).  [B, N, dim] -> [B, N, dim]."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, style: BlockStyle = "lightning",
                 qk_norm: bool = False, head_dim: int | None = None):
        super().__init__()
        norm = "rms" if style == "lightning" else "layer"
        mlp = "swiglu" if style == "lightning" else "gelu"
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim, heads, head_dim=head_dim, qk_norm=qk_norm)
        self.norm2 = make_norm(norm, dim)
        self.mlp = make_mlp(mlp, dim, mlp_ratio)

    def forward(self, x: torch.Tensor, rope: nn.Module | None = None, causal: bool = False,
                cache: KVCache | None = None) -> torch.Tensor:
        """``causal`` and ``cache`` as in :meth:`Attention.forward` (the autoregressive flow)."""
        x = x + self.attn(self.norm1(x), rope=rope, causal=causal, cache=cache)  # [B, N, D]
        return x + self.mlp(self.norm2(x))  # [B, N, D]
