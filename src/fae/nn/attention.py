"""Multi-head self-attention on ``F.scaled_dot_product_attention`` with a fused QKV projection.

Used by every transformer in FAE (encoder, feature decoder, pixel decoder, generator).
The head dim is free: the FAE encoder uses 24 heads x 256 = 6144 wide attention on 1536-d tokens.
Causal attention and a key/value cache (token-by-token decoding) serve the autoregressive flow
(``fae.generation.flow``). :func:`joint_attention` runs one softmax attention over the tokens of
several streams, each projected by its own :class:`Attention` weights (MMDiT, Esser et al. 2024),
with an optional key padding mask (padded text tokens are never attended to).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys and values of the tokens one attention layer has seen so far (one cache per layer).

    Decoding feeds new tokens only; :meth:`extend` appends their keys/values [B, H, n, d] and returns
    everything cached [B, H, T, d], so each step costs O(T) instead of re-running the prefix.
    """

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


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

    def project(self, x: torch.Tensor, rope: nn.Module | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, N, dim] -> q, k, v [B, H, N, d] (q/k normalised, then rotated by ``rope``)."""
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, self.head_dim)  # [B, N, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, d]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        return q, k, v

    def output(self, heads_out: torch.Tensor) -> torch.Tensor:
        """Attention output [B, H, N, d] -> [B, N, out_dim] through the output projection."""
        B, _, N, _ = heads_out.shape
        return self.proj(heads_out.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))

    def forward(self, x: torch.Tensor, rope: nn.Module | None = None, causal: bool = False,
                cache: KVCache | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``rope`` rotates queries and keys of these N tokens; ``causal`` lets token i attend to
        tokens <= i only; ``cache`` holds the keys/values of earlier tokens (then x holds the new
        tokens, which come after every cached one); ``key_mask`` [B, N] bool (True = real token)
        keeps every query from attending to padding (not combinable with ``causal`` / ``cache``)."""
        B, N, _ = x.shape
        q, k, v = self.project(x, rope)
        if key_mask is not None:
            if causal or cache is not None:
                raise ValueError("key_mask is not supported together with causal attention or a KV cache")
            return self.output(masked_attention(q, k, v, key_mask))
        mask = None
        if cache is not None:
            k, v = cache.extend(k, v)  # [B, H, T, d], T = cached + N
            if causal and N > 1:  # new token j sees every cached token and new tokens <= j
                T = k.shape[2]
                mask = torch.ones(N, T, dtype=torch.bool, device=x.device).tril(diagonal=T - N)
            causal = False  # a single new token may see the whole cache
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # [B, H, N, d]
        return self.output(out)  # [B, N, out_dim]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     key_mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention of q [B, H, N, d] over k, v [B, H, T, d]; ``key_mask`` [B, T] bool
    (True = attend) drops padded keys. Every row needs at least one real key."""
    mask = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, T]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, N, d]


def joint_attention(streams: list[tuple[Attention, torch.Tensor, nn.Module | None, torch.Tensor | None]]
                    ) -> list[torch.Tensor]:
    """One attention over the concatenated tokens of several streams (MMDiT's joint attention).

    Each entry is ``(attention, x [B, N_i, dim_i], rope or None, key_mask [B, N_i] or None)``: the
    stream's own :class:`Attention` projects its tokens to q/k/v (its own weights, q/k norms and
    rotation), queries of every stream attend to the keys of all streams (masked keys excepted),
    and each stream's slice of the output goes through its own output projection.
    Returns ``[B, N_i, out_dim_i]`` per stream, in order.
    """
    projected = [attn.project(x, rope) for attn, x, rope, _ in streams]  # each 3 x [B, H, N_i, d]
    q, k, v = (torch.cat([p[i] for p in projected], dim=2) for i in range(3))  # [B, H, sum N_i, d]
    masks = [m if m is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
             for _, x, _, m in streams]
    out = masked_attention(q, k, v, torch.cat(masks, dim=1) if any(m is not None for *_, m in streams) else None)
    sizes = [x.shape[1] for _, x, _, _ in streams]
    return [attn.output(part) for (attn, *_), part in zip(streams, out.split(sizes, dim=2))]
