"""The contract every frozen backbone adapter fulfils.

A backbone maps images to patch tokens ``[B, N, D]`` on a ``grid = (h, w)`` with ``N = h * w``.
It owns its preprocessing: it accepts uint8 ([0, 255]) or float ([0, 1]) images ``[B, C, H, W]``
of any size, C in {1, 3} (grayscale is repeated to RGB), and resizes / crops / normalises them as
the pretrained model expects. It is frozen: eval mode, no gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneInfo:
    """What a registry entry knows without loading weights (enough for ``--dry-run``)."""

    name: str
    dim: int  # token width D
    grid: tuple[int, int]  # token grid (h, w) at ``resolution``
    resolution: int  # square input size in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # hub id or package the weights come from
    description: str = ""

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


class Backbone(nn.Module):
    """Base class: subclasses implement ``forward_features(pixels) -> tokens``."""

    info: BackboneInfo

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def grid(self) -> tuple[int, int]:
        return self.info.grid

    @property
    def resolution(self) -> int:
        return self.info.resolution

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] (uint8 or float in [0, 1]) -> tokens [B, N, D] (float32)."""
        return self.forward_features(self.preprocess(images)).float()
