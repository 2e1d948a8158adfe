"""Multi-head self-attention on ``F.scaled_dot_product_attention`` with a fused QKV projection.

Used by every transformer in FAE (encoder, feature decoder, pixel decoder, generator).
The head dim is free: the FAE encoder uses 24 heads x 256 = 6144 wide attention on 1536-d tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """x [B, N, dim] -> [B, N, out_dim]; attention width = heads * head_dim (may differ from dim).

    Args:
        dim: input token width.
        heads: number of heads.
        head_dim: per-head width (default dim // heads).
        qkv_bias: bias on the fused QKV projection.
        qk_norm: RMSNorm on queries and keys per head (stabilises large models).
        out_dim: output width (default dim); ``proj=False`` drops the output projection and
            returns the raw heads * head_dim attention output.
    """

    def __init__(self, dim: int, heads: int, head_dim: int | None = None, qkv_bias: bool = True,
                 qk_norm: bool = False, out_dim: int | None = None, proj: bool = True,
                 proj_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim or dim // heads
        inner = heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(inner, out_dim or dim, bias=proj_bias) if proj else nn.Identity()

    def forward(self, x: torch.Tensor, rope: nn.Module | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, self.head_dim)  # [B, N, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, d]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, d]
        out = out.transpose(1, 2).reshape(B, N, self.heads * self.head_dim)  # [B, N, H*d]
        return self.proj(out)
