"""The generator's architecture config, its size presets and its two block flavours.

Sizes follow DiT (Peebles & Xie 2023, Table 1); the flavours follow the FAE paper's Table 6:
SiT blocks (LayerNorm + GELU MLP) versus LightningDiT blocks (RMSNorm + SwiGLU + 2-D RoPE).
Each of the three LightningDiT changes can be switched on alone, so the ablation is a config change:

    model: {size: XL, style: sit, rope: true}      # SiT + RoPE only
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from fae.errors import ConfigError
from fae.generation.latent_grid import LatentGrid

# name -> (depth, width, heads), DiT Table 1.
SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

# flavour -> defaults of the three switchable block choices (FAE paper, Table 6).
STYLES: dict[str, dict[str, object]] = {
    "sit": {"norm": "layer", "mlp": "gelu", "rope": False},
    "lightningdit": {"norm": "rms", "mlp": "swiglu", "rope": True},
}


@dataclass
class GeneratorConfig(LatentGrid):
    """Architecture of the latent diffusion transformer (saved in the export's config.json).

    Args:
        size: preset in ``SIZES`` giving depth / dim / heads when those are left null.
        style: "sit" or "lightningdit"; gives norm / mlp / rope when those are left null.
        depth, dim, heads: explicit transformer shape (overrides ``size``).
        norm: "layer" (SiT) or "rms" (LightningDiT), affine-free under adaLN.
        mlp: "gelu" (SiT, ratio-4 MLP) or "swiglu" (LightningDiT, 2/3 * 4 * dim hidden).
        rope: 2-D rotary embedding in every attention layer (LightningDiT).
        qk_norm: RMSNorm on queries/keys (optional in LightningDiT; off in the paper's default).
        pos_embed: absolute positions added after patch embedding: "sincos" (fixed, DiT/SiT and
            LightningDiT), "learned", or "none".
        mlp_ratio: MLP hidden ratio.
        patch_size: 1 (paper) or 2.
        latent_channels: channels c of the latent (paper 32); null = from upstream (the FAE
            export or latent cache the generator is trained on, see :meth:`with_latent_shape`).
        latent_size: latent grid side h = w (paper 16 for 256 px with DINOv2/14 at 224 px); null =
            from upstream, like ``latent_channels``.
        num_classes: class-conditional with this many classes (0 = unconditional); row
            ``num_classes`` of the embedding table is the null class used for CFG.
        class_dropout: probability a label is replaced by the null class in training (DiT: 0.1).
    """

    size: Literal["S", "B", "L", "XL"] = "XL"
    style: Literal["sit", "lightningdit"] = "sit"
    depth: int | None = None
    dim: int | None = None
    heads: int | None = None
    norm: Literal["layer", "rms"] | None = None
    mlp: Literal["gelu", "swiglu"] | None = None
    rope: bool | None = None
    qk_norm: bool = False
    pos_embed: Literal["sincos", "learned", "none"] = "sincos"
    mlp_ratio: float = 4.0
    patch_size: int = 1
    latent_channels: int | None = None
    latent_size: int | None = None
    num_classes: int = 1000
    class_dropout: float = 0.1

    def resolved(self) -> GeneratorConfig:
        """A copy with every null field filled from ``size`` / ``style``; the latent shape has no
        default and must be known (explicitly, or through :meth:`with_latent_shape`)."""
        for key in ("latent_channels", "latent_size"):
            if getattr(self, key) is None:
                raise ConfigError(f"config key 'model.{key}' is null: set it, or let `fae train "
                                  f"generator` read it from the FAE export (data.fae) or the latent "
                                  f"cache (data.cache)")
        depth, dim, heads = SIZES[self.size]
        style = STYLES[self.style]
        out = dataclasses.replace(
            self,
            depth=self.depth if self.depth is not None else depth,
            dim=self.dim if self.dim is not None else dim,
            heads=self.heads if self.heads is not None else heads,
            norm=self.norm if self.norm is not None else style["norm"],
            mlp=self.mlp if self.mlp is not None else style["mlp"],
            rope=self.rope if self.rope is not None else style["rope"],
        )
        out.validate()
        return out

    def validate(self) -> None:
        self.check_at_least(("depth", "dim", "heads", "patch_size", "latent_channels", "latent_size"), 1)
        self.check_patch()
        if self.num_classes < 0:
            raise ConfigError(f"config key 'model.num_classes' must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ConfigError(f"config key 'model.class_dropout' must be in [0, 1), got {self.class_dropout}")
        if self.dim is not None and self.heads is not None:
            self._validate_heads()

    def _validate_heads(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"config key 'model.dim' ({self.dim}) must be divisible by model.heads "
                              f"({self.heads})")
        head_dim = self.dim // self.heads
        if self.rope and head_dim % 4:
            raise ConfigError(f"2-D RoPE needs head dim (model.dim / model.heads = {head_dim}) "
                              f"divisible by 4")
        if self.pos_embed == "sincos" and self.dim % 4:
            raise ConfigError(f"sin-cos positions need model.dim divisible by 4, got {self.dim}")
