"""A backbone's raw tokens as generator latents: the "diffusing raw 1536-d features" row of the
paper's encoder ablation (FID 15.37 with DINOv2-g/14 tokens), and ``fae experiment``'s ``tokens``
latent space on the demo.

Raw tokens [B, N, D] on a grid (h, w) are a latent [B, D, h, w] (row-major, N = h * w). The
latent cache stores them unnormalised; like an FAE's latents, the generator standardises them per
channel with the statistics the cache records (``latent_mean`` / ``latent_std`` [D], measured on
the training images and floored by :func:`floored_stats`). A stage-Ib pixel decoder (trained on
noisy raw tokens) turns them back into images.

:class:`SpaceStats` is the module every such non-FAE latent space derives from: it carries the
statistics as buffers, as an FAE does, and an identity hashed from them (the cache's "FAE identity").
"""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from fae.backbones.base import Backbone
from fae.images import from_unit_range

# Per-channel std floor as a fraction of the mean std over channels (our choice): EfficientNet has
# channels that are zero on every training image (std 0), and padded pixels are constant; a floor
# relative to the typical scale keeps a rare activation from becoming a 1e5-sized latent.
STD_FLOOR_FRACTION = 0.1


def floored_stats(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [c] with std floored at ``STD_FLOOR_FRACTION`` of its mean (all-zero: 1)."""
    floor = STD_FLOOR_FRACTION * float(std.mean()) if float(std.mean()) > 0 else 1.0
    return mean.float(), std.float().clamp_min(floor)


class SpaceStats(nn.Module):
    """Holds the per-channel latent statistics [c] as buffers (``SampleDecoder`` finds the device
    from ``latent_mean``).

    Args:
        channels: latent channels c.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("latent_mean", torch.zeros(channels))
        self.register_buffer("latent_std", torch.ones(channels))

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.latent_mean.copy_(mean.reshape(-1))
        self.latent_std.copy_(std.reshape(-1))

    def identity(self, **what) -> str:
        """sha256 of what defines the space plus its statistics (the latent cache's identity)."""
        record = {"space": type(self).__name__, **what, "mean": self.latent_mean.tolist(),
                  "std": self.latent_std.tolist()}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


class TokenSpace(SpaceStats):
    """Raw tokens [B, N, D] <-> latents [B, D, h, w] (N = h * w, row-major).

    Args:
        grid: token grid (h, w).
        dim: token width D.
        pixel_decoder: raw tokens -> images in [-1, 1] (a ``PixelDecoder``; needed by ``decode``).
    """

    def __init__(self, grid: tuple[int, int], dim: int, pixel_decoder: nn.Module | None = None):
        super().__init__(dim)
        self.grid, self.dim = (int(grid[0]), int(grid[1])), int(dim)
        self.pixel_decoder = pixel_decoder

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.dim, *self.grid)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, D, h, w] (float32, unnormalised)."""
        return tokens.float().transpose(1, 2).reshape(len(tokens), self.dim, *self.grid)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] -> images [B, C, H, W] in [0, 1] through the pixel decoder."""
        tokens = z.float().flatten(2).transpose(1, 2)  # [B, N, D]
        return from_unit_range(self.pixel_decoder(tokens.to(self.latent_mean.device)))


class TokenEncoder:
    """Images -> the :class:`TokenSpace` latents of their raw backbone tokens: the encoder a latent
    cache of raw tokens is written with, and the one held-out images go through.

    Args:
        space: the token space (grid and width of ``backbone``).
        backbone: the frozen backbone (it applies its own preprocessing to uint8 images).
    """

    def __init__(self, space: TokenSpace, backbone: Backbone):
        if (space.dim, space.grid) != (backbone.dim, tuple(backbone.grid)):
            raise ValueError(f"token space {space.latent_shape} does not match the backbone's "
                             f"{backbone.dim} x {tuple(backbone.grid)} tokens")
        self.space, self.backbone = space, backbone

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, C, H, W] -> [B, D, h, w]."""
        return self.space.encode(self.backbone(images))  # tokens [B, N, D] -> [B, D, h, w]
