"""The latent spaces ``fae experiment latent-space`` puts a generator on, besides FAE latents.

Each is a small module with ``encode`` (what goes into the latent cache), ``decode(z) -> images in
[0, 1]`` (what :class:`fae.generation.decode.SampleDecoder` calls) and its per-channel statistics
as ``latent_mean`` / ``latent_std`` buffers (as an FAE carries them; the cache records them and the
generator normalises with them):

* :class:`TokenSpace`: the raw backbone tokens [N, D] as a latent [D, h, w] (the identity
  encoder), decoded by the stage-Ib pixel decoder (trained on noisy raw tokens).
* :class:`PatchSpace`: the pixels themselves, padded to a multiple of the token grid and
  patchified to [C * p * p, h, w] (the same token count as the FAE's latent).

The pixel VAE (``fae.autoencoder.pixel_autoencoder``) already has this interface.
"""
from __future__ import annotations

import hashlib
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from fae.images import from_unit_range, to_unit_range

# Per-channel std floor as a fraction of the mean std over channels (our choice): EfficientNet has
# channels that are zero on every training image (std 0), and padded pixels are constant; a floor
# relative to the typical scale keeps a rare activation from becoming a 1e5-sized latent.
STD_FLOOR_FRACTION = 0.1


def floored_stats(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [c] with std floored at ``STD_FLOOR_FRACTION`` of its mean (all-zero: 1)."""
    floor = STD_FLOOR_FRACTION * float(std.mean()) if float(std.mean()) > 0 else 1.0
    return mean.float(), std.float().clamp_min(floor)


class _Space(nn.Module):
    """Holds the per-channel latent statistics [c] as buffers (``SampleDecoder`` finds the device
    from ``latent_mean``)."""

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


class TokenSpace(_Space):
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
        """[B, N, D] -> [B, D, h, w]."""
        return tokens.float().transpose(1, 2).reshape(len(tokens), self.dim, *self.grid)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] -> images [B, C, H, W] in [0, 1] through the pixel decoder."""
        tokens = z.float().flatten(2).transpose(1, 2)  # [B, N, D]
        return from_unit_range(self.pixel_decoder(tokens.to(self.latent_mean.device)))


class PatchSpace(_Space):
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
