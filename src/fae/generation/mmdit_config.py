"""Config of the text-to-image MMDiT (Esser et al. 2024, "Scaling Rectified Flow Transformers",
SD3) on FAE latents; the network lives in ``fae.generation.mmdit``.

The FAE paper's text-to-image generator (Sec. 5.2, Table 3) is an MMDiT of 16 layers, width 1024,
16 heads x 64, MLP ratio 4 (603.46M parameters), conditioned on a frozen T5-XL: the preset
``paper``. S and B are our smaller choices for experiments; the demo sets depth/dim/heads itself.

Positions: latent tokens get 2-D RoPE in every joint attention (LightningDiT's axial rotation on
the latent grid); text tokens get no rotation and no position embedding (SD3 adds none to its text
stream either): the text encoder already encodes word order in its outputs, and leaving them
unrotated keeps text/latent attention independent of where a latent token sits.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from fae.errors import ConfigError
from fae.generation.latent_grid import LatentGrid

# name -> (depth, width, heads).
MMDIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),  # our choice
    "B": (12, 768, 12),  # our choice
    "paper": (16, 1024, 16),  # FAE paper Sec. 5.2: 16 layers x 1024, 16 heads x 64
}

# name -> the published parameter count the dry run prints beside ours.
PUBLISHED_MMDIT_PARAMS: dict[str, str] = {"paper": "603.46M (FAE paper, Sec. 5.2 / Table 3)"}


@dataclass
class MMDiTConfig(LatentGrid):
    """Architecture of the text-to-image MMDiT (saved in the export's config.json).

    Args:
        size: preset in ``MMDIT_SIZES`` giving depth / dim / heads where those are left null.
        depth, dim, heads: explicit transformer shape (overrides ``size``).
        mlp_ratio: MLP hidden ratio of both streams (paper: 4).
        norm: "layer" (SD3) or "rms", affine-free under adaLN.
        mlp: "gelu" (SD3) or "swiglu".
        qk_norm: RMSNorm on queries and keys of both streams (SD3 Sec. 5.3.2; our default: on).
        rope: 2-D RoPE on the latent tokens (text tokens are never rotated; module docstring).
        context_pre_only: the last block's text stream only supplies keys/values (no output
            projection, MLP or gates), as in SD3, whose text tokens are discarded after it.
        patch_size: 1 (FAE latents, paper) or 2.
        latent_channels, latent_size: latent shape (c, h = w); null = from the FAE export or the
            latent cache, as for the class-conditional generator.
        text_dim: width of the text encoder's token embeddings; null = from the ``text`` section's
            encoder (its registry entry or local config).
        pooled_dim: width of its pooled embedding; null = from the encoder like ``text_dim``.
        caption_dropout: probability a training caption is replaced by the null caption (CFG
            training; our default 0.1, as DiT's class dropout).
    """

    SECTION = "mmdit"  # config section named in errors (fae.generation.latent_grid)

    size: Literal["S", "B", "paper"] = "paper"
    depth: int | None = None
    dim: int | None = None
    heads: int | None = None
    mlp_ratio: float = 4.0
    norm: Literal["layer", "rms"] = "layer"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    qk_norm: bool = True
    rope: bool = True
    context_pre_only: bool = True
    patch_size: int = 1
    latent_channels: int | None = None
    latent_size: int | None = None
    text_dim: int | None = None
    pooled_dim: int | None = None
    caption_dropout: float = 0.1

    @property
    def num_classes(self) -> int:
        """No class labels (``LatentGenerator`` asks): the condition is text."""
        return 0

    def resolved(self) -> MMDiTConfig:
        """A copy with every null size field filled from ``size``; latent shape and text widths
        must be known (explicitly, or through :meth:`with_latent_shape` / :meth:`with_text`)."""
        for key in ("latent_channels", "latent_size"):
            if getattr(self, key) is None:
                raise ConfigError(f"config key 'mmdit.{key}' is null: set it, or let `fae train "
                                  f"generator` read it from the FAE export (data.fae) or the latent "
                                  f"cache (data.cache)")
        for key in ("text_dim", "pooled_dim"):
            if getattr(self, key) is None:
                raise ConfigError(f"config key 'mmdit.{key}' is null: set it, or name the text encoder "
                                  f"in text.encoder so that `fae train generator` reads it")
        depth, dim, heads = MMDIT_SIZES[self.size]
        out = dataclasses.replace(self, depth=self.depth if self.depth is not None else depth,
                                  dim=self.dim if self.dim is not None else dim,
                                  heads=self.heads if self.heads is not None else heads)
        out.validate()
        return out

    def with_text(self, text_dim: int, pooled_dim: int, source: str) -> MMDiTConfig:
        """A copy whose text widths are those of the encoder ``source``; explicit values must agree."""
        return dataclasses.replace(self, **_agreeing(self, {"text_dim": text_dim, "pooled_dim": pooled_dim},
                                                     source))

    def validate(self) -> None:
        self.check_at_least(("depth", "dim", "heads", "patch_size", "latent_channels", "latent_size", "text_dim",
                             "pooled_dim"), 1)
        self.check_patch()
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"config key 'mmdit.caption_dropout' must be in [0, 1), got {self.caption_dropout}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"config key 'mmdit.mlp_ratio' must be > 0, got {self.mlp_ratio}")
        if self.dim is not None and self.heads is not None:
            if self.dim % self.heads:
                raise ConfigError(f"config key 'mmdit.dim' ({self.dim}) must be divisible by mmdit.heads "
                                  f"({self.heads})")
            if self.rope and (self.dim // self.heads) % 4:
                raise ConfigError(f"2-D RoPE needs head dim (mmdit.dim / mmdit.heads = "
                                  f"{self.dim // self.heads}) divisible by 4")


def _agreeing(cfg: MMDiTConfig, values: dict[str, int], source: str) -> dict[str, int]:
    for key, value in values.items():
        given = getattr(cfg, key)
        if given is not None and given != value:
            raise ConfigError(f"config key 'mmdit.{key}' is {given}, but {source} gives {value}; leave "
                              f"it null to use {value}")
    return values
