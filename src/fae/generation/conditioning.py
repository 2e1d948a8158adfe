"""Conditioning modules: turn a condition (class labels today, text later) into the vector that,
added to the timestep embedding, drives every adaLN modulation of the generator.

The interface every conditioner fulfils (so text conditioning can be added without touching the
transformer):

* ``forward(cond) -> [B, dim]``; in training mode it replaces conditions by the null condition
  with probability ``dropout`` (classifier-free guidance training, Ho & Salimans 2022);
* ``null_like(cond)`` -> the null ("unconditional") condition for the same batch, used by CFG.
"""
from __future__ import annotations

import torch
from torch import nn

from fae.errors import ConfigError


class ClassConditioner(nn.Module):
    """Class labels [B] (int64) -> embeddings [B, dim]; label ``num_classes`` is the null class.

    Args:
        num_classes: number of real classes; the table has ``num_classes + 1`` rows (DiT).
        dim: embedding width (the transformer width).
        dropout: training-time probability of replacing a label by the null class.
    """

    def __init__(self, num_classes: int, dim: int, dropout: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def null_like(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.null_class)

    def check(self, labels: torch.Tensor) -> None:
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ConfigError(f"class labels must be in [0, {self.num_classes}] ({self.num_classes} = "
                              f"null class), got values in [{int(labels.min())}, {int(labels.max())}]")

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout
            labels = torch.where(drop, self.null_like(labels), labels)
        return self.table(labels)  # [B, dim]


class Unconditional(nn.Module):
    """No condition: contributes nothing to the adaLN vector (``cond`` is ignored, may be None)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def null_like(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        return cond

    def check(self, cond: torch.Tensor | None) -> None:
        return None

    def forward(self, cond: torch.Tensor | None) -> torch.Tensor | float:
        return 0.0


def build_conditioner(num_classes: int, dim: int, dropout: float) -> nn.Module:
    """Class conditioner when ``num_classes > 0``, otherwise unconditional."""
    if num_classes > 0:
        return ClassConditioner(num_classes, dim, dropout)
    return Unconditional(dim)
