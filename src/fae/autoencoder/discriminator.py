"""The patch discriminator of the pixel decoder's GAN loss (PatchGAN, Isola et al. 2017).

A stack of stride-2 4x4 convolutions with LeakyReLU(0.2) whose output is a map of logits, one per
overlapping image patch (the taming-transformers / TiTok setup the paper's loss follows). We use
GroupNorm instead of BatchNorm (our choice): it behaves the same for any per-rank batch size and
needs no buffer synchronisation under DDP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fae.autoencoder.losses import LeCamEMA
from fae.errors import ConfigError


@dataclass
class DiscriminatorConfig:
    """Patch discriminator size.

    Args:
        channels: width of the first convolution; doubled per layer, capped at 8x.
        layers: number of stride-2 downsampling convolutions (3 for 256 px; 2 for 28 px images,
            where 3 would shrink the map below the 4x4 kernels).
        groups: GroupNorm groups (must divide every layer's width).
    """

    channels: int = 64
    layers: int = 3
    groups: int = 32

    def validate(self) -> None:
        if self.channels < 1 or self.layers < 1:
            raise ConfigError(f"config key 'discriminator': channels and layers must be >= 1, "
                              f"got channels={self.channels}, layers={self.layers}")
        if self.channels % self.groups:
            raise ConfigError(f"config key 'discriminator.groups' ({self.groups}) must divide "
                              f"'discriminator.channels' ({self.channels})")


def _conv_block(c_in: int, c_out: int, stride: int, groups: int | None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride, 1, bias=groups is None)]
    if groups is not None:
        layers.append(nn.GroupNorm(groups, c_out))
    layers.append(nn.LeakyReLU(0.2))
    return layers


class PatchDiscriminator(nn.Module):
    """images [B, C, H, W] in [-1, 1] -> patch logits [B, 1, h, w] (real > 0 > fake under hinge).

    Args:
        config: sizes (``DiscriminatorConfig``).
        in_channels: image channels.
        lecam_ema_decay: keep the LeCam moving averages of its outputs (``self.lecam``, buffers in
            its state dict, so checkpoints carry them) with this decay; None = none (LeCam off).
    """

    def __init__(self, config: DiscriminatorConfig, in_channels: int = 3, lecam_ema_decay: float | None = None):
        super().__init__()
        config.validate()
        width = config.channels
        layers = _conv_block(in_channels, width, 2, None)  # no norm on the first layer (pix2pix)
        for i in range(1, config.layers):
            nxt = config.channels * min(2 ** i, 8)
            layers += _conv_block(width, nxt, 2, config.groups)
            width = nxt
        nxt = config.channels * min(2 ** config.layers, 8)
        layers += _conv_block(width, nxt, 1, config.groups)
        layers.append(nn.Conv2d(nxt, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)  # DCGAN / pix2pix init
        self.lecam = LeCamEMA(lecam_ema_decay) if lecam_ema_decay is not None else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # [B, 1, h, w]
