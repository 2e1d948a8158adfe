"""The feature decoder: latent z [B, c, h, w] -> normalised backbone tokens [B, N, D].

Paper (stage Ia): 6 transformer layers at the backbone width (1536, 24 heads x 64), MLP ratio 4,
RoPE + RMSNorm + SwiGLU - LightningDiT blocks without adaLN (``fae.nn.TransformerBlock`` with
style="lightning"). Layout: linear c -> width, + learned position embedding, blocks (2-D RoPE on
queries/keys), [optional final RMSNorm], and a linear width -> D only when width != D.

Parameter count at the paper's sizes (c = 32, D = width = 1536, N = 256), biases included:
input linear 50,688 + position embedding 393,216 + 6 x 28,330,496 per block = 170,426,880
= 170.43M, the paper's figure. We leave out a final norm by default: the decoder regresses
standardised features whose per-token norm varies (e.g. empty background vs object tokens), and
an RMSNorm as the last op would force every output token to one norm (``final_norm: true`` adds
it back; +1,536 parameters).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fae.errors import ConfigError
from fae.nn import Rope2D, TransformerBlock


@dataclass
class FeatureDecoderConfig:
    """Feature decoder settings (``model.decoder`` in YAML).

    Args:
        depth: number of transformer blocks (paper 6).
        width: block width; null = the backbone token width D (paper: 1536 = D).
        heads: attention heads (paper 24; head dim = width // heads must be divisible by 4).
        mlp_ratio: MLP ratio (paper 4; SwiGLU keeps the parameter count of a ratio-4 MLP).
        final_norm: RMSNorm after the last block (see the module docstring for why it is off).
    """

    depth: int = 6
    width: int | None = None
    heads: int = 24
    mlp_ratio: float = 4.0
    final_norm: bool = False

    def validate(self) -> None:
        if self.depth < 0:
            raise ConfigError(f"config key 'decoder.depth' must be >= 0, got {self.depth}")
        if self.width is not None and self.width < 1:
            raise ConfigError(f"config key 'decoder.width' must be >= 1, got {self.width}")
        if self.heads < 1:
            raise ConfigError(f"config key 'decoder.heads' must be >= 1, got {self.heads}")


class FeatureDecoder(nn.Module):
    """z [B, c, h, w] -> tokens [B, h*w, D] (in the FAE's normalised feature space).

    Args:
        config: the decoder settings.
        dim: backbone token width D.
        grid: token grid (h, w).
        latent_channels: c.
    """

    def __init__(self, config: FeatureDecoderConfig, dim: int, grid: tuple[int, int], latent_channels: int):
        super().__init__()
        width = config.width or dim
        if width % config.heads or (width // config.heads) % 4:
            raise ConfigError(f"config key 'decoder.heads': {config.heads} heads do not split width "
                              f"{width} into a head dim divisible by 4 (needed by 2-D RoPE)")
        self.grid = tuple(grid)
        self.embed = nn.Linear(latent_channels, width)
        self.pos_embed = nn.Parameter(torch.empty(1, grid[0] * grid[1], width))  # [1, N, W]
        if not self.pos_embed.is_meta:  # normal_ on meta imports torch._dynamo (slow); skip it
            nn.init.normal_(self.pos_embed, std=0.02)
        self.rope = Rope2D(self.grid, width // config.heads)
        self.blocks = nn.ModuleList(TransformerBlock(width, config.heads, config.mlp_ratio, style="lightning")
                                    for _ in range(config.depth))
        self.norm = nn.RMSNorm(width, eps=1e-6) if config.final_norm else nn.Identity()
        self.out = nn.Linear(width, dim) if width != dim else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.flatten(2).transpose(1, 2)  # [B, c, h, w] -> [B, N, c], row-major tokens
        x = self.embed(x) + self.pos_embed  # [B, N, W]
        for block in self.blocks:
            x = block(x, rope=self.rope)  # [B, N, W]
        return self.out(self.norm(x))  # [B, N, D]
