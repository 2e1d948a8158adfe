"""Conditioning modules: turn a condition (class labels, or text embeddings) into the vector that,
added to the timestep embedding, drives every adaLN modulation of the generator.

The interface every conditioner fulfils (so text conditioning can be added without touching the
transformer):

* ``forward(cond) -> [B, dim]``; in training mode it replaces conditions by the null condition
  with probability ``dropout`` (classifier-free guidance training, Ho & Salimans 2022);
* ``null_like(cond)`` -> the null ("unconditional") condition for the same batch, used by CFG.

Text (:class:`TextConditioner`, the MMDiT's) also returns the projected text tokens the network
attends to; its condition is a :class:`TextCondition` of frozen text-encoder outputs.
"""
from __future__ import annotations

from typing import NamedTuple

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


class TextCondition(NamedTuple):
    """Frozen text-encoder outputs for a batch of captions (a NamedTuple, so default collate, DDP
    and :func:`fae.generation.samplers.cat_conditions` handle it like a tensor).

    Attributes:
        tokens: float [B, L, text_dim] token embeddings (padding rows are ignored).
        mask: bool [B, L], True for real tokens.
        pooled: float [B, pooled_dim] one vector per caption.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device | str) -> "TextCondition":
        return TextCondition(self.tokens.to(device), self.mask.to(device, torch.bool), self.pooled.to(device))


class TextConditioner(nn.Module):
    """Text embeddings -> (adaLN vector [B, dim], text tokens [B, L, dim], mask [B, L]).

    The pooled embedding goes through an MLP (SD3's ``y_embedder``) and is added to the timestep
    embedding by the model; the tokens are projected to the transformer width (SD3's
    ``context_embedder``).

    The null caption (CFG) is learned, like DiT's null class: one learned token (the only unmasked
    position) and a learned pooled vector. So "unconditional" is defined by the model alone and a
    cache of text embeddings needs no entry for the empty caption.

    Args:
        text_dim: width of the text encoder's tokens.
        pooled_dim: width of its pooled vector.
        dim: transformer width.
        dropout: training-time probability of replacing a caption by the null caption.
    """

    def __init__(self, text_dim: int, pooled_dim: int, dim: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = dropout
        self.context_embed = nn.Linear(text_dim, dim)
        self.pooled_embed = nn.Sequential(nn.Linear(pooled_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null_token = nn.Parameter(torch.randn(text_dim) * 0.02)
        self.null_pooled = nn.Parameter(torch.randn(pooled_dim) * 0.02)

    def null_like(self, cond: TextCondition) -> TextCondition:
        B, L, _ = cond.tokens.shape
        tokens = torch.zeros_like(cond.tokens)
        tokens[:, 0] = self.null_token.to(tokens.dtype)
        mask = torch.zeros(B, L, dtype=torch.bool, device=cond.mask.device)
        mask[:, 0] = True
        return TextCondition(tokens, mask, self.null_pooled.to(cond.pooled.dtype).expand_as(cond.pooled))

    def check(self, cond: TextCondition) -> None:
        if not isinstance(cond, TextCondition):
            raise ConfigError(f"a text-conditioned generator needs a TextCondition (tokens, mask, pooled), "
                              f"got {type(cond).__name__}")
        want_t, want_p = self.context_embed.in_features, self.pooled_embed[0].in_features
        if cond.tokens.shape[-1] != want_t or cond.pooled.shape[-1] != want_p:
            raise ConfigError(f"text embeddings of width {cond.tokens.shape[-1]} (pooled "
                              f"{cond.pooled.shape[-1]}) do not fit this generator, built for text "
                              f"width {want_t} (pooled {want_p}): use the text encoder it was trained with")

    def drop(self, cond: TextCondition) -> TextCondition:
        """Replace each caption by the null caption with probability ``dropout`` (training)."""
        drop = torch.rand(cond.pooled.shape[0], device=cond.pooled.device) < self.dropout  # [B]
        null = self.null_like(cond)
        return TextCondition(torch.where(drop[:, None, None], null.tokens, cond.tokens),
                             torch.where(drop[:, None], null.mask, cond.mask),
                             torch.where(drop[:, None], null.pooled, cond.pooled))

    def forward(self, cond: TextCondition) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.training and self.dropout > 0:
            cond = self.drop(cond)
        context = self.context_embed(cond.tokens)  # [B, L, dim]
        return self.pooled_embed(cond.pooled), context, cond.mask.to(torch.bool)  # [B, dim], ..., [B, L]


def build_conditioner(num_classes: int, dim: int, dropout: float) -> nn.Module:
    """Class conditioner when ``num_classes > 0``, otherwise unconditional."""
    if num_classes > 0:
        return ClassConditioner(num_classes, dim, dropout)
    return Unconditional(dim)
