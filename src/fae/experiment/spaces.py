"""The latent spaces ``fae experiment latent-space`` puts a generator on, besides FAE latents.

Each is a small module with ``encode`` (what goes into the latent cache), ``decode(z) -> images in
[0, 1]`` (what :class:`fae.generation.decode.SampleDecoder` calls) and its per-channel statistics
as ``latent_mean`` / ``latent_std`` buffers (as an FAE carries them; the cache records them and the
generator normalises with them):

* :class:`~fae.backbones.token_space.TokenSpace`: the raw backbone tokens [N, D] as a latent
  [D, h, w] (the identity encoder), decoded by the stage-Ib pixel decoder (trained on noisy raw
  tokens); it lives with the backbones, as ``fae cache-latents`` writes ImageNet token caches too.
* :class:`PatchSpace`: the pixels themselves, padded to a multiple of the token grid and
  patchified to [C * p * p, h, w] (the same token count as the FAE's latent).

The pixel VAE (``fae.autoencoder.pixel_autoencoder``) already has this interface.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fae.backbones.token_space import SpaceStats, TokenSpace, floored_stats
from fae.images import from_unit_range, to_unit_range

__all__ = ["PatchSpace", "TokenSpace", "floored_stats"]  # the token space lives with the backbones


class PatchSpace(SpaceStats):
    """Images [B, C, S, S] <-> patches [B, C * p * p, h, w] with p = ceil(S / h); the image is
    padded right and bottom with black (-1) to p * h, and cropped back when decoding.

    Args:
        grid: token grid (h, w) (the FAE's, so the generator sees the same token count).
        image_size: S.
        channels: C.
    """

    def __init__(self, grid: tuple[int, int], image_size: int, channels: int = 1):
        self.grid, self.image_size, self.channels = (int(grid[0]), int(grid[1])), int(image_size), int(channels)
        self.patch = (math.ceil(image_size / self.grid[0]), math.ceil(image_size / self.grid[1]))
        super().__init__(channels * self.patch[0] * self.patch[1])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.channels * self.patch[0] * self.patch[1], *self.grid)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 / [0, 1] images [B, C, S, S] -> [B, C*ph*pw, h, w] in [-1, 1]."""
        (h, w), (ph, pw) = self.grid, self.patch
        x = to_unit_range(images)  # [B, C, S, S]
        x = F.pad(x, (0, w * pw - x.shape[-1], 0, h * ph - x.shape[-2]), value=-1.0)  # [B, C, h*ph, w*pw]
        x = x.view(len(x), self.channels, h, ph, w, pw)  # [B, C, h, ph, w, pw]
        return x.permute(0, 1, 3, 5, 2, 4).reshape(len(x), -1, h, w)  # [B, C*ph*pw, h, w]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C*ph*pw, h, w] -> images [B, C, S, S] in [0, 1]."""
        (h, w), (ph, pw) = self.grid, self.patch
        x = z.float().view(len(z), self.channels, ph, pw, h, w).permute(0, 1, 4, 2, 5, 3)  # [B, C, h, ph, w, pw]
        x = x.reshape(len(z), self.channels, h * ph, w * pw)[..., :self.image_size, :self.image_size]
        return from_unit_range(x)
