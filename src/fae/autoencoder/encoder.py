"""FAE encoders: normalised backbone tokens [B, N, D] -> posterior moments [B, N, 2c].

Three variants, chosen by ``EncoderConfig.kind`` alone (the paper's encoder ablation):

- ``attention`` (paper default): ONE self-attention layer over all patch tokens with a large
  per-head width (24 heads x 256 = 6144 at D = 1536). In the order of the paper's figure:
  input embedding -> linear proj 1 (QKV) -> softmax attention -> skip connection (input added to
  the attention output) -> activation -> linear proj 2 to 2c channels (mu and log sigma^2).
  Attention across patches lets the encoder drop information that is redundant *between* tokens,
  which a per-token map cannot (paper, "why one layer").
- ``linear``: a per-token linear map D -> 2c (the ablation's weakest encoder).
- ``transformer``: ``depth`` pre-norm LightningDiT blocks (RMSNorm + SwiGLU + 2-D RoPE) at width
  D (or ``width``), then RMSNorm and a linear map to 2c (the deeper ablation; it overfits the weak adaptation
  objective and loses pretrained information, paper: probe 85.74% vs 86.17% for one layer).

Two layouts of the attention kind (``skip`` x ``activation_width``, paper §4 / Fig. 7 / App. D:
"we merge the consecutive linear layers in the attention module"; counts at D = 1536, c = 32, 24 x
256 = 6144, biases included):

- ``skip: projected, activation_width: attention``, ``pos_embed: false`` (the schema default, used by
  the ImageNet configs, the demo and every experiment; the paper's count exactly):
  one projection D -> 4 x 6144 (Q, K, V and a projected skip; 28,329,984 + 9,443,328), softmax
  attention, attention output + projected skip at 6144, activation at 6144, linear proj 2 6144 -> 64
  (393,280): 38,166,592 = 38.17M, with ``pos_embed: false`` (DINOv2 tokens already carry position).
  The output projection 6144 -> D merges into linear proj 2, so there is none.
- ``skip: identity, activation_width: token``, ``pos_embed: true`` (the default before 2026-12-05;
  exports written before these keys existed load with it, see :func:`with_layout_of_old_exports`):
  QKV (28,329,984), an output projection 6144 -> D so the input can be added back (9,438,720),
  activation at D, linear proj 2 D -> 64 (98,368) = 37,867,072; with the learned position table read
  into the figure's "input embedding" box (256 x 1536 = 393,216): 38,260,288 = 38.26M (0.24% above).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fae.errors import ConfigError
from fae.nn import Attention, Rope2D, TransformerBlock

EncoderKind = Literal["attention", "linear", "transformer"]

_LAYOUTS = {"identity": "token", "projected": "attention"}  # skip -> the width its activation acts at
_ACTIVATIONS = {"gelu": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "none": lambda x: x}


@dataclass
class EncoderConfig:
    """Encoder settings (``model.encoder`` in YAML).

    Args:
        kind: "attention" (paper), "linear" or "transformer".
        heads: attention heads (attention and transformer kinds).
        head_dim: per-head width of the single attention layer (paper 256; attention kind only;
            the transformer kind uses D // heads like a standard block).
        activation: the nonlinearity after the skip connection ("gelu" (our choice; the paper
            does not name it), "silu" or "none"); attention kind only.
        skip: the attention kind's skip connection: "identity" (the input added back after an
            output projection to D) or "projected" (a fourth projection of the input, fused with
            Q, K, V, added at the attention width; the paper's exact count).
        activation_width: where the attention kind's activation acts: "token" (width D, with
            skip=identity) or "attention" (heads x head_dim, with skip=projected).
        pos_embed: add a learned position embedding to the input tokens (attention and
            transformer kinds; one reading of the "input embedding" step of the paper's figure).
        depth: number of blocks of the transformer kind (paper ablation: 6).
        mlp_ratio: MLP ratio of the transformer kind's blocks.
        width: block width of the transformer kind; null = the token width D (paper). A smaller
            width adds a linear D -> width input projection (for CPU-sized ablations).
    """

    kind: EncoderKind = "attention"
    heads: int = 24
    head_dim: int = 256
    activation: Literal["gelu", "silu", "none"] = "gelu"
    skip: Literal["identity", "projected"] = "projected"
    activation_width: Literal["token", "attention"] = "attention"
    pos_embed: bool = False
    depth: int = 6
    mlp_ratio: float = 4.0
    width: int | None = None

    def validate(self) -> None:
        for key in ("heads", "head_dim", "depth"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'encoder.{key}' must be >= 1, got {getattr(self, key)}")
        if self.kind == "attention" and _LAYOUTS.get(self.skip) != self.activation_width:
            raise ConfigError(f"config keys 'encoder.skip' = {self.skip} and 'encoder.activation_width' = "
                              f"{self.activation_width} do not fit together: an identity skip adds the "
                              f"D-wide input, so its activation is at width 'token'; a projected skip "
                              f"adds at width 'attention' (heads x head_dim)")



# The attention layout of exports written before ``skip`` / ``activation_width`` existed (and
# before 2026-12-05, when the exact-count layout became the default): their config.json lacks the keys.
OLD_EXPORT_LAYOUT = {"skip": "identity", "activation_width": "token", "pos_embed": True}


def with_layout_of_old_exports(encoder: dict) -> dict:
    """An export's ``encoder`` section with the keys it lacks set to the layout it was written with.

    Exports record every key of their config, so a missing key means an export older than the key,
    whose encoder had the old defaults: filling today's defaults would build a different network.
    """
    return {**OLD_EXPORT_LAYOUT, **encoder}


def _position_embedding(enabled: bool, tokens: int, dim: int) -> nn.Parameter | None:
    """Learned [1, N, D] table, small init (ViT/MAE style), or None."""
    if not enabled:
        return None
    table = nn.Parameter(torch.empty(1, tokens, dim))
    if not table.is_meta:  # normal_ on meta imports torch._dynamo (~20 s); nothing to fill there
        nn.init.normal_(table, std=0.02)
    return table


class AttentionEncoder(nn.Module):
    """The paper's single-attention-layer encoder. [B, N, D] -> [B, N, 2c].

    Args:
        config: the encoder settings (``skip`` picks one of the two layouts in the module docstring).
        dim: token width D.
        grid: token grid (h, w), N = h * w.
        latent_channels: c.
    """

    def __init__(self, config: EncoderConfig, dim: int, grid: tuple[int, int], latent_channels: int):
        super().__init__()
        inner = config.heads * config.head_dim
        projected = config.skip == "projected"
        self.pos_embed = _position_embedding(config.pos_embed, grid[0] * grid[1], dim)
        # projected: QKV without an output projection, [B, N, inner]; identity: QKV + out-proj to D
        self.attn = Attention(dim, config.heads, head_dim=config.head_dim, proj=not projected)
        # the fourth slice of the fused projection (Fig. 7: linear layers merged), or None
        self.skip = nn.Linear(dim, inner) if projected else None
        self.activation = _ACTIVATIONS[config.activation]
        self.head = nn.Linear(inner if projected else dim, 2 * latent_channels)  # linear proj 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = x + self.pos_embed  # input embedding, [B, N, D]
        skip = x if self.skip is None else self.skip(x)  # [B, N, D] or [B, N, inner]
        h = skip + self.attn(x)  # QKV -> softmax attention -> skip connection, same width as skip
        return self.head(self.activation(h))  # [B, N, 2c]


class LinearEncoder(nn.Module):
    """Per-token linear map (ablation). [B, N, D] -> [B, N, 2c]. Args as AttentionEncoder."""

    def __init__(self, config: EncoderConfig, dim: int, grid: tuple[int, int], latent_channels: int):
        super().__init__()
        self.head = nn.Linear(dim, 2 * latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)  # [B, N, 2c]


class TransformerEncoder(nn.Module):
    """``depth`` LightningDiT blocks + RMSNorm + linear (ablation). Args as AttentionEncoder."""

    def __init__(self, config: EncoderConfig, dim: int, grid: tuple[int, int], latent_channels: int):
        super().__init__()
        width = config.width or dim
        if width % config.heads or (width // config.heads) % 4:
            raise ConfigError(f"config key 'encoder.heads': {config.heads} heads do not split width "
                              f"{width} into a head dim divisible by 4 (needed by 2-D RoPE)")
        self.proj_in = nn.Linear(dim, width) if width != dim else nn.Identity()
        self.pos_embed = _position_embedding(config.pos_embed, grid[0] * grid[1], width)
        self.rope = Rope2D(grid, width // config.heads)
        self.blocks = nn.ModuleList(TransformerBlock(width, config.heads, config.mlp_ratio, style="lightning")
                                    for _ in range(config.depth))
        self.norm = nn.RMSNorm(width, eps=1e-6)
        self.head = nn.Linear(width, 2 * latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)  # [B, N, W]
        if self.pos_embed is not None:
            x = x + self.pos_embed  # [B, N, W]
        for block in self.blocks:
            x = block(x, rope=self.rope)  # [B, N, W]
        return self.head(self.norm(x))  # [B, N, 2c]


ENCODERS: dict[str, type[nn.Module]] = {
    "attention": AttentionEncoder,
    "linear": LinearEncoder,
    "transformer": TransformerEncoder,
}


def build_encoder(config: EncoderConfig, dim: int, grid: tuple[int, int], latent_channels: int) -> nn.Module:
    """The encoder named by ``config.kind``."""
    if config.kind not in ENCODERS:
        raise ConfigError(f"config key 'encoder.kind': unknown encoder '{config.kind}' "
                          f"(choices: {', '.join(ENCODERS)})")
    return ENCODERS[config.kind](config, dim, grid, latent_channels)
