"""The text-to-image MMDiT (Esser et al. 2024, Sec. 4 and Fig. 2) predicting the flow velocity of
an FAE latent from frozen text embeddings. Config and presets: ``fae.generation.mmdit_config``.

    z_t [B, c, h, w] --patchify + linear--> x [B, N, D]                       (latent stream)
    text tokens [B, L, Dt] --context_embed--> y [B, L, D]                     (text stream)
    c_vec = SiLU(TimestepEmbedder(t) + MLP(pooled text))                      [B, D]
      --> depth x MMDiTBlock(x, y, c_vec): each stream its own adaLN-Zero, q/k/v, output projection
          and MLP; ONE joint attention over [x; y] (padded text keys masked out)
      --> final adaLN + linear on x --> unpatchify --> v [B, c, h, w]

Time ``t`` follows ``fae.generation.transport`` (t = 1 is noise). Latent tokens carry 2-D RoPE;
text tokens carry no position (see the config module).
"""
from __future__ import annotations

import torch
from torch import nn

from fae.generation.conditioning import TextCondition, TextConditioner
from fae.generation.mmdit_config import MMDiTConfig
from fae.generation.model import FinalLayer, adaln_zero_init, modulate, patchify, unpatchify
from fae.nn import Attention, Rope2D, TimestepEmbedder, joint_attention, make_mlp, make_norm


class StreamModulated(nn.Module):
    """One stream's half of an MMDiT block: adaLN-Zero modulation, q/k/v + output projection and
    MLP. With ``pre_only`` it only supplies modulated keys/values (no projection, MLP or gates).

    Args:
        dim: token width D.
        heads: attention heads.
        cfg: the MMDiT config (norm, mlp, mlp_ratio, qk_norm).
        pre_only: the stream's output is not used after this block (SD3's last text block).
    """

    def __init__(self, dim: int, heads: int, cfg: MMDiTConfig, pre_only: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = make_norm(cfg.norm, dim, affine=False)
        self.attn = Attention(dim, heads, qk_norm=cfg.qk_norm, proj=not pre_only)
        if not pre_only:
            self.norm2 = make_norm(cfg.norm, dim, affine=False)
            self.mlp = make_mlp(cfg.mlp, dim, cfg.mlp_ratio)
        # SiLU is applied once to the conditioning vector by the model (shared by all blocks).
        self.adaLN = nn.Linear(dim, (2 if pre_only else 6) * dim)

    def pre(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """adaLN(x) for the attention input [B, N, D], and the remaining modulations [B, 1, D]."""
        mods = self.adaLN(c).unsqueeze(1).chunk(2 if self.pre_only else 6, dim=-1)
        return modulate(self.norm1(x), mods[0], mods[1]), mods[2:]

    def post(self, x: torch.Tensor, attn_out: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x + gate1 * attn_out; x + gate2 * MLP(adaLN(x)).  [B, N, D]."""
        gate1, shift2, scale2, gate2 = mods
        x = x + gate1 * attn_out
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class MMDiTBlock(nn.Module):
    """(x [B, N, D], y [B, L, D]) -> (x', y'): joint attention with per-stream weights (SD3 Fig. 2b).

    Args:
        dim, heads: width and attention heads.
        cfg: the MMDiT config.
        context_pre_only: the text stream only supplies keys/values (the last block in SD3);
            then y' is None.
    """

    def __init__(self, dim: int, heads: int, cfg: MMDiTConfig, context_pre_only: bool = False):
        super().__init__()
        self.latent = StreamModulated(dim, heads, cfg)
        self.text = StreamModulated(dim, heads, cfg, pre_only=context_pre_only)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, c: torch.Tensor,
                rope: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x_in, x_mods = self.latent.pre(x, c)  # [B, N, D]
        y_in, y_mods = self.text.pre(y, c)  # [B, L, D]
        # Latent tokens are rotated by their grid position; text tokens are not (no position).
        x_attn, y_attn = joint_attention([(self.latent.attn, x_in, rope, None),
                                          (self.text.attn, y_in, None, mask)])
        x = self.latent.post(x, x_attn, x_mods)  # [B, N, D]
        return x, (None if self.text.pre_only else self.text.post(y, y_attn, y_mods))


class MMDiT(nn.Module):
    """v = model(z_t, t, cond): the flow velocity of latents z_t [B, c, h, w] given a
    :class:`TextCondition` (token embeddings, mask, pooled vector) of frozen text-encoder outputs.

    Args:
        config: an :class:`MMDiTConfig` (null size fields are resolved from its preset).
    """

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        cfg = self.config = config.resolved()
        p, c, dim = cfg.patch_size, cfg.latent_channels, cfg.dim
        self.patch_embed = nn.Linear(p * p * c, dim)  # = Conv2d(kernel = stride = p)
        self.t_embed = TimestepEmbedder(dim)
        self.conditioner = TextConditioner(cfg.text_dim, cfg.pooled_dim, dim, cfg.caption_dropout)
        self.blocks = nn.ModuleList(
            MMDiTBlock(dim, cfg.heads, cfg, context_pre_only=cfg.context_pre_only and i == cfg.depth - 1)
            for i in range(cfg.depth))
        self.rope = Rope2D(cfg.grid, dim // cfg.heads) if cfg.rope else None
        self.final = FinalLayer(dim, p * p * c, cfg.norm)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, N(0, 0.02) timestep MLP, and adaLN-Zero (every
        modulation and the output layer start at zero, so every block starts as the identity)."""
        adaln_zero_init(self, self.t_embed,
                        [stream.adaLN for block in self.blocks for stream in (block.latent, block.text)])

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """z [B, c, h, w] noisy latent, t [B] times in [0, 1], cond text embeddings -> v [B, c, h, w]."""
        p = self.config.patch_size
        x = self.patch_embed(patchify(z, p))  # [B, N, D]
        pooled, y, mask = self.conditioner(cond)  # [B, D], [B, L, D], [B, L]
        c = nn.functional.silu(self.t_embed(t.expand(z.shape[0])) + pooled)  # [B, D]
        for block in self.blocks:
            x, y = block(x, y, mask, c, self.rope)  # [B, N, D], [B, L, D] (None after a pre-only block)
        out = self.final(x, c)  # [B, N, p*p*c]
        return unpatchify(out, p, self.config.latent_channels, self.config.grid)  # [B, c, h, w]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_mmdit(config: MMDiTConfig, device: torch.device | str = "cpu") -> MMDiT:
    """Construct an MMDiT directly on ``device`` (``"meta"`` counts parameters without memory)."""
    with torch.device(device):
        return MMDiT(config)
