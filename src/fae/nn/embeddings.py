"""Position and timestep embeddings shared by the transformers."""
from __future__ import annotations

import math

import torch
from torch import nn


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[N] positions -> [N, dim] (sin | cos) with MAE/DiT frequencies 1 / 10000^(i / (dim/2))."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    out = positions.double()[:, None] * omega[None]  # [N, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos position table [h*w, dim] (row-major), half the channels per axis."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    h, w = grid
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] scalar times (any scale) -> [B, dim] sinusoidal features (cos | sin), as in DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t -> 2-layer MLP -> [B, hidden] (DiT's t-embedder)."""

    def __init__(self, hidden: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale  # t in [0, 1] is scaled so the frequencies cover it as DiT's 0..1000 steps
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t * self.scale, self.freq_dim))
