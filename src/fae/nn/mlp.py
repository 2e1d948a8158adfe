"""Feed-forward layers: the GELU MLP of ViT/SiT and the SwiGLU of LightningDiT."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear, hidden = ratio * dim (ViT / DiT / SiT)."""

    def __init__(self, dim: int, ratio: float = 4.0, out_dim: int | None = None, bias: bool = True):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, out_dim or dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def swiglu_hidden(dim: int, ratio: float = 4.0, multiple_of: int = 1) -> int:
    """Hidden width that keeps SwiGLU's parameters equal to a ratio-``ratio`` MLP: 2/3 * ratio * dim."""
    hidden = int(2 * dim * ratio / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """SiLU(x W1) * (x W2) -> W3 (Shazeer 2020), W1 and W2 fused into one matmul."""

    def __init__(self, dim: int, ratio: float = 4.0, out_dim: int | None = None, bias: bool = True):
        super().__init__()
        hidden = swiglu_hidden(dim, ratio)
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, out_dim or dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)
