"""A conventional pixel-space VAE: the SD-VAE stand-in of ``fae experiment latent-space``.

The paper compares FAE latents with SD-VAE's (STARFlow: FID 2.67 vs 4.51). SD-VAE is a
convolutional VAE trained on pixels for reconstruction (L1 / perceptual / GAN) with a tiny KL
weight. This one keeps its essentials at Fashion-MNIST size and drops the perceptual and GAN
terms (our choice: the experiment isolates *what the latent space is*, not decoder polish):

    image [B, C, S0, S0] --resize--> [B, C, S, S] with S = h * 2^k
      --conv, k x (stride-2 conv + GroupNorm + SiLU), 1x1 conv--> (mu, log sigma^2) [B, 2c, h, w]
    z [B, c, h, w] --conv, k x (2x nearest upsample + conv + GroupNorm + SiLU), conv--> [B, C, S, S]
      --resize--> [B, C, S0, S0] in [-1, 1]

The latent grid (h, w) and channels c are those of the FAE it is compared with, so the generator
on top sees the same latent shape. Loss (the stage ``fae train pixel-autoencoder``):
``l1_weight * |x_hat - x| + kl_weight * KL``, both means per element.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fae.autoencoder.vae import DiagonalGaussian
from fae.config import from_dict
from fae.errors import ConfigError
from fae.export import Exportable, load_strict
from fae.images import from_unit_range, to_unit_range
from fae.io import safetensors_sha256


@dataclass
class PixelAutoencoderConfig:
    """Architecture of :class:`PixelAutoencoder`.

    Args:
        latent_channels: c of the latent [c, h, w] (the experiment sets the FAE's).
        grid: latent grid (h, w), square (the experiment sets the FAE's token grid).
        image_size: side of the input and output images.
        image_channels: 1 for Fashion-MNIST.
        width: channels of every convolution (our choice for a 2-core CPU).
        groups: GroupNorm groups (must divide ``width``).
    """

    latent_channels: int = 32
    grid: tuple[int, int] = (4, 4)
    image_size: int = 28
    image_channels: int = 1
    width: int = 64
    groups: int = 8

    def validate(self) -> None:
        h, w = self.grid
        if h != w or h < 1:
            raise ConfigError(f"config key 'model.grid' must be square and positive, got {list(self.grid)}")
        for key in ("latent_channels", "image_size", "image_channels", "width", "groups"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}' must be >= 1, got {getattr(self, key)}")
        if self.width % self.groups:
            raise ConfigError(f"config key 'model.groups' ({self.groups}) must divide model.width ({self.width})")

    @property
    def levels(self) -> int:
        """Stride-2 steps k: the fewest with h * 2^k >= image_size."""
        k = 0
        while self.grid[0] * 2 ** k < self.image_size:
            k += 1
        return k

    @property
    def canvas(self) -> int:
        """S = h * 2^k: the side the convolutions work at."""
        return self.grid[0] * 2 ** self.levels


def _block(width: int, groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, width, 3, stride=stride, padding=1), nn.GroupNorm(groups, width), nn.SiLU())


class PixelAutoencoder(Exportable, nn.Module):
    """Pixels <-> latents [B, c, h, w] with a diagonal-Gaussian posterior.

    Args:
        config: the architecture.
    """

    export_format = "fae-pixel-autoencoder"

    def __init__(self, config: PixelAutoencoderConfig):
        super().__init__()
        config.validate()
        self.config = config
        width, groups, k, c = config.width, config.groups, config.levels, config.latent_channels
        self.encoder = nn.Sequential(nn.Conv2d(config.image_channels, width, 3, padding=1),
                                     *[_block(width, groups, stride=2) for _ in range(k)],
                                     nn.Conv2d(width, 2 * c, 1))
        self.decoder_in = nn.Conv2d(c, width, 3, padding=1)
        self.decoder_blocks = nn.ModuleList(_block(width, groups) for _ in range(k))
        self.decoder_out = nn.Conv2d(width, config.image_channels, 3, padding=1)
        # Per-channel statistics of the posterior mean over training images (for the generator).
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.latent_channels, *self.config.grid)

    def _resize(self, x: torch.Tensor, size: int) -> torch.Tensor:
        if x.shape[-1] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def posterior(self, images: torch.Tensor) -> DiagonalGaussian:
        """images in [-1, 1] [B, C, S0, S0] -> q(z|x) with mean / logvar [B, c, h, w]."""
        x = self._resize(images.float(), self.config.canvas)  # [B, C, S, S]
        moments = self.encoder(x)  # [B, 2c, h, w]
        return DiagonalGaussian(moments.movedim(1, -1))  # mean / logvar [B, h, w, c]

    def decode_unit(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, c, h, w] -> images [B, C, S0, S0] in [-1, 1] (unclamped: training's form)."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ConfigError(f"pixel autoencoder latents must be [B, {', '.join(map(str, self.latent_shape))}], "
                              f"got {list(z.shape)}")
        x = self.decoder_in(z.float())  # [B, width, h, w]
        for block in self.decoder_blocks:
            x = block(F.interpolate(x, scale_factor=2, mode="nearest"))  # [B, width, 2h', 2w']
        return self._resize(self.decoder_out(x), self.config.image_size)  # [B, C, S0, S0]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass on images in [-1, 1]: ``recon`` [B, C, S0, S0], posterior ``mean`` /
        ``logvar`` [B, h, w, c]. The sample's noise comes from the global RNG (seeded per step)."""
        post = self.posterior(images)
        z = post.sample().movedim(-1, 1)  # [B, c, h, w]
        return {"recon": self.decode_unit(z), "mean": post.mean, "logvar": post.logvar}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images -> posterior mean z [B, c, h, w]."""
        return self.posterior(to_unit_range(images.to(self.latent_mean.device))).mean.movedim(-1, 1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, c, h, w] -> images [B, C, S0, S0] in [0, 1]."""
        return from_unit_range(self.decode_unit(z.to(self.latent_mean.device)))

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.latent_mean.copy_(mean.reshape(-1))
        self.latent_std.copy_(std.reshape(-1))

    def identity(self) -> str:
        """sha256 (hex) of the encoder and decoder weights (the latent space; stats left out)."""
        tensors = {k: v for k, v in self.export_tensors().items() if not k.startswith("latent_")}
        return safetensors_sha256(tensors)

    # ---- export (fae.export: config.json + model.safetensors) ---------------------------------

    def export_config(self) -> dict[str, Any]:
        return {"identity": self.identity(), "latent_shape": list(self.latent_shape),
                "latent_stats": {"mean": self.latent_mean.tolist(), "std": self.latent_std.tolist()},
                "config": asdict(self.config)}

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

    @classmethod
    def from_export(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path) -> "PixelAutoencoder":
        model = cls(from_dict(PixelAutoencoderConfig, config["config"], prefix="config"))
        load_strict(model, tensors, folder)
        return model
