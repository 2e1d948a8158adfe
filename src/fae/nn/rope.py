"""2-D rotary position embedding (RoPE) for tokens on an (h, w) grid.

Half of each head's channels rotate with the row index, half with the column index
(the axial 2-D RoPE used by LightningDiT / EVA). Frequencies follow RoFormer: theta^(-2i/d).
"""
from __future__ import annotations

import torch
from torch import nn


def rope_2d_angles(grid: tuple[int, int], head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles [h*w, head_dim/2] for a row-major grid; head_dim must be divisible by 4."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    h, w = grid
    quarter = head_dim // 4
    # Built on the CPU even under ``with torch.device("meta")`` (dry runs): tables are tiny.
    cpu = torch.device("cpu")
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64, device=cpu) / quarter)  # [d/4]
    rows = torch.arange(h, dtype=torch.float64, device=cpu).repeat_interleave(w)  # [N]
    cols = torch.arange(w, dtype=torch.float64, device=cpu).repeat(h)  # [N]
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)  # [N, d/2]
    return angles.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[..., 2i], x[..., 2i+1]) of x [B, H, N, d] by the given angles
    (in fp32, or fp64 for fp64 inputs: the flow's invertibility is checked in fp64)."""
    x2 = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))  # [B, H, N, d/2, 2]
    a, b = x2[..., 0], x2[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).type_as(x)


class Rope2D(nn.Module):
    """Holds cos/sin tables for one grid; call ``rope(q)`` on [B, heads, N, head_dim]."""

    def __init__(self, grid: tuple[int, int], head_dim: int, theta: float = 10000.0):
        super().__init__()
        angles = rope_2d_angles(grid, head_dim, theta)
        # Buffers are not saved: they are a pure function of (grid, head_dim, theta).
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, self.cos.to(x.device), self.sin.to(x.device))
