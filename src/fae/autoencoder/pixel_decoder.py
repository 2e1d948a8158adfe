"""The pixel decoder: a ViT that maps raw backbone tokens to an image (paper, stages Ib / II).

Paper size: ViT-L (24 layers x 1024 wide, 16 heads, MLP ratio 4) at patch 16, turning the
16x16x1536 DINOv2-g/14 token map into a 256x256x3 image (~305M parameters). Each token becomes one
``patch x patch`` block of pixels, so ``patch = image_size / grid``.

    tokens [B, N, D] --LayerNorm (no affine)--> Linear D->dim --+pos--> depth x ViT block
        --> LayerNorm --> Linear dim->p*p*C --> unpatchify --> image [B, C, H, W] in [-1, 1]
    (options: ``head: conv`` paints features and convs make the pixels; ``output_size`` resizes)

Input normalisation lives here (not in the caller): the decoder takes the backbone's RAW tokens
(or the FAE feature decoder's x_hat, which is trained in the same raw scale).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fae.config import check_choices, from_dict
from fae.errors import CheckpointError, ConfigError
from fae.export import Exportable, load_strict
from fae.nn import TransformerBlock, sincos_2d


@dataclass
class PixelDecoderConfig:
    """Architecture of the pixel decoder (token width and grid come from the backbone).

    Args:
        depth: number of ViT blocks (paper: 24).
        dim: transformer width (paper: 1024).
        heads: attention heads (paper: 16).
        mlp_ratio: MLP hidden width / dim (paper: 4).
        out_channels: image channels (3 for RGB, 1 for Fashion-MNIST).
        image_size: side in pixels of the image the tokens paint; must be divisible by the token
            grid (paper: 256).
        output_size: side of the returned image; null = ``image_size``. When it differs, the painted
            canvas (the conv head's feature image) is resized (bilinear, antialiased) to it before the
            conv head. Our option for grids that do not divide the image: Fashion-MNIST's 28 px from
            an 8x8 grid is painted at 32 px (4x4 per token), so every patch still covers the same
            part of the image as its token.
        input_norm: "layer" = LayerNorm without affine over each raw token before the input
            projection (our choice: makes the decoder indifferent to the backbone's feature
            scale); "none" feeds raw tokens to the projection.
        qk_norm: RMSNorm on queries/keys (our choice, off by default; helps bf16 at scale).
        refine_channels: width of an optional residual 3x3-conv refinement on the output image
            (0 = off, the paper's pure ViT). Our addition for coarse token grids (the CPU demo's 4x4),
            where each token paints a large patch and the patch seams stay visible; the second conv
            starts at zero, so the module starts as the identity.
        head: how tokens become pixels. "linear" (the paper's ViT): one Linear per token paints its
            ``patch x patch`` block. "conv" (our option for coarse grids): the Linear paints a
            ``head_channels``-deep feature image instead, and ``head_convs`` residual 3x3 convs at
            full resolution turn it into pixels, so neighbouring patches share detail and edges.
            Measured on the CPU demo's 4x4 grid (28 px, 500 steps): see demo/pixel_decoder_ib.yaml.
        head_channels: depth of the feature image ("conv" head only).
        head_convs: residual 3x3 conv layers at full resolution ("conv" head only).
    """

    depth: int = 24
    dim: int = 1024
    heads: int = 16
    mlp_ratio: float = 4.0
    out_channels: int = 3
    image_size: int = 256
    output_size: int | None = None
    input_norm: Literal["layer", "none"] = "layer"
    qk_norm: bool = False
    refine_channels: int = 0
    head: Literal["linear", "conv"] = "linear"
    head_channels: int = 32
    head_convs: int = 2

    def validate(self) -> None:
        check_choices(self, "pixel_decoder")
        if self.head == "conv" and (self.head_channels < 1 or self.head_convs < 0):
            raise ConfigError(f"config keys 'pixel_decoder.head_channels' (>= 1) and 'pixel_decoder.head_convs' "
                              f"(>= 0) are out of range: {self.head_channels}, {self.head_convs}")
        if self.refine_channels < 0:
            raise ConfigError(f"config key 'pixel_decoder.refine_channels' must be >= 0, got {self.refine_channels}")
        if self.output_size is not None and self.output_size < 1:
            raise ConfigError(f"config key 'pixel_decoder.output_size' must be >= 1 or null, got {self.output_size}")
        for key in ("depth", "dim", "heads", "out_channels", "image_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'pixel_decoder.{key}' must be >= 1, got {getattr(self, key)}")
        if self.dim % self.heads:
            raise ConfigError(f"config key 'pixel_decoder.dim' ({self.dim}) must be divisible by "
                              f"'pixel_decoder.heads' ({self.heads})")
        if self.dim % 4:
            raise ConfigError(f"config key 'pixel_decoder.dim' must be divisible by 4 (2-D sin-cos "
                              f"position table), got {self.dim}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"config key 'pixel_decoder.mlp_ratio' must be > 0, got {self.mlp_ratio}")


def patch_size(image_size: int, grid: tuple[int, int]) -> tuple[int, int]:
    """Pixels per token along (rows, cols): image_size / grid, which must divide exactly."""
    h, w = grid
    if image_size % h or image_size % w:
        raise ConfigError(f"pixel_decoder.image_size={image_size} is not divisible by the token grid "
                          f"{h}x{w}; choose an image size that is a multiple of the grid")
    return image_size // h, image_size // w


class PixelDecoder(Exportable, nn.Module):
    """Raw backbone tokens [B, N, token_dim] -> images [B, C, H, W] in [-1, 1].

    Args:
        config: architecture (``PixelDecoderConfig``).
        token_dim: width D of the input tokens (the backbone's width, e.g. 1536 for DINOv2-g).
        grid: token grid (h, w) with N = h * w, row-major.
    """

    export_format = "fae-pixel-decoder"

    def __init__(self, config: PixelDecoderConfig, token_dim: int, grid: tuple[int, int]):
        super().__init__()
        config.validate()
        self.config = config
        self.token_dim = int(token_dim)
        self.grid = (int(grid[0]), int(grid[1]))
        self.patch = patch_size(config.image_size, self.grid)
        c, (ph, pw) = config.out_channels, self.patch
        self.input_norm = nn.LayerNorm(token_dim, elementwise_affine=False) if config.input_norm == "layer" \
            else nn.Identity()
        self.input_proj = nn.Linear(token_dim, config.dim)
        # Learned positions, initialised from the fixed 2-D sin-cos table (MAE).
        self.pos_embed = nn.Parameter(sincos_2d(config.dim, self.grid)[None])  # [1, N, dim]
        self.blocks = nn.ModuleList(
            TransformerBlock(config.dim, config.heads, config.mlp_ratio, style="vit", qk_norm=config.qk_norm)
            for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        painted = c if config.head == "linear" else config.head_channels  # channels the Linear paints
        self.head = nn.Linear(config.dim, ph * pw * painted)  # one token -> one patch of pixels (or features)
        self.conv_head = ConvHead(painted, c, config.head_convs) if config.head == "conv" else None
        self.refine = SeamRefiner(c, config.refine_channels) if config.refine_channels else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final projection (used for the adaptive GAN weight, taming-style)."""
        return self.head.weight if self.conv_head is None else self.conv_head.conv_out.weight

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, ph*pw*C] -> [B, C, h*ph, w*pw]."""
        (h, w), (ph, pw), c = self.grid, self.patch, x.shape[-1] // (self.patch[0] * self.patch[1])
        x = x.view(x.shape[0], h, w, ph, pw, c)  # [B, h, w, ph, pw, C]
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, h * ph, w * pw)

    def resize_canvas(self, canvas: torch.Tensor) -> torch.Tensor:
        """The painted canvas [B, C, image_size, image_size] at ``output_size`` (unchanged when null)."""
        size = self.config.output_size
        if size is None or size == self.config.image_size:
            return canvas
        return nn.functional.interpolate(canvas, size=(size, size), mode="bilinear", antialias=True,
                                         align_corners=False)  # [B, C, S, S]

    def forward(self, tokens: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """tokens [B, N, D] (raw scale) -> images [B, C, H, W].

        ``clamp=True`` clips to [-1, 1] (what users get); training calls ``clamp=False`` so pixels
        that overshoot still receive gradients.
        """
        if tokens.ndim != 3 or tokens.shape[1] != self.num_tokens or tokens.shape[2] != self.token_dim:
            raise ValueError(f"PixelDecoder expects tokens [B, {self.num_tokens}, {self.token_dim}], "
                             f"got {list(tokens.shape)}")
        x = self.input_proj(self.input_norm(tokens.to(self.input_proj.weight.dtype)))  # [B, N, dim]
        x = x + self.pos_embed  # [B, N, dim]
        for block in self.blocks:
            x = block(x)  # [B, N, dim]
        x = self.head(self.norm(x))  # [B, N, ph*pw*C]
        images = self.unpatchify(x)  # [B, C, H, W] (conv head: [B, head_channels, H, W])
        images = self.resize_canvas(images)  # [B, C, S, S] with S = output_size
        if self.conv_head is not None:
            images = self.conv_head(images)  # [B, C, H, W]
        if self.refine is not None:
            images = self.refine(images)  # [B, C, H, W]
        return images.clamp(-1.0, 1.0) if clamp else images

    # ---- export (fae.export: config.json + model.safetensors) ---------------------------------------

    def export_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this module (its config.json, and nested in an FAE export)."""
        return {"pixel_decoder": asdict(self.config), "token_dim": self.token_dim, "grid": list(self.grid)}

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    @classmethod
    def from_export_config(cls, data: dict[str, Any]) -> "PixelDecoder":
        """A freshly initialised decoder of the architecture recorded in ``data``."""
        try:
            config = from_dict(PixelDecoderConfig, data["pixel_decoder"], prefix="pixel_decoder")
            return cls(config, int(data["token_dim"]), tuple(data["grid"]))
        except KeyError as e:
            raise CheckpointError(f"pixel decoder config lacks the key {e}") from None

    @classmethod
    def from_export(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path) -> "PixelDecoder":
        model = cls.from_export_config(config)
        load_strict(model, tensors, folder)
        return model


class SeamRefiner(nn.Module):
    """images + conv3x3(GELU(conv3x3(images))): mixes pixels across patch borders (5x5 reach)."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # starts as the identity
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + self.conv_out(nn.functional.gelu(self.conv_in(images)))  # [B, C, H, W]


class ConvHead(nn.Module):
    """Feature image [B, width, H, W] -> images [B, C, H, W]: ``depth`` residual (GELU -> conv3x3)
    layers, then GELU -> conv3x3 to the image channels."""

    def __init__(self, width: int, channels: int, depth: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(nn.functional.gelu(x))  # [B, width, H, W]
        return self.conv_out(nn.functional.gelu(x))  # [B, C, H, W]
