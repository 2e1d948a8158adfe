"""The latent diffusion transformer: adaLN-Zero DiT blocks (Peebles & Xie 2023) in SiT or
LightningDiT flavour (see ``fae.generation.config``), predicting the flow velocity of a latent.

    z_t [B, c, h, w] --patchify--> [B, N, p*p*c] --linear--> [B, N, D] (+ sincos / learned positions)
      --> depth x DiTBlock(x, c_vec) --> final adaLN + linear --> unpatchify --> v [B, c, h, w]
    c_vec = TimestepEmbedder(t) + Conditioner(labels)                                    [B, D]

The network only sees tensors: time ``t`` in [0, 1] with the convention of
``fae.generation.transport`` (t = 1 is noise) and conditions for its conditioner.
"""
from __future__ import annotations

import torch
from torch import nn

from fae.generation.conditioning import build_conditioner
from fae.generation.config import GeneratorConfig
from fae.nn import Attention, Rope2D, TimestepEmbedder, make_mlp, make_norm, sincos_2d


def patchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """[B, c, h, w] -> [B, (h/p)*(w/p), p*p*c] (row-major tokens, (p, p, c) inside a token)."""
    B, c, h, w = z.shape
    z = z.reshape(B, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # [B, h/p, w/p, p, p, c]
    return z.reshape(B, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int, grid: tuple[int, int]) -> torch.Tensor:
    """[B, N, p*p*c] -> [B, c, h, w] for a token grid (h/p, w/p); the inverse of :func:`patchify`."""
    B = x.shape[0]
    gh, gw = grid
    x = x.reshape(B, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [B, c, h/p, p, w/p, p]
    return x.reshape(B, c, gh * p, gw * p)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with shift/scale [B, 1, D] broadcast over tokens."""
    return torch.addcmul(shift, x, 1 + scale)


class DiTBlock(nn.Module):
    """x + gate1 * Attn(adaLN(x)); x + gate2 * MLP(adaLN(x)).  [B, N, D] -> [B, N, D].

    Args:
        dim: token width D.
        heads: attention heads.
        mlp_ratio: MLP hidden ratio.
        norm: "layer" or "rms" (affine-free: adaLN supplies scale and shift).
        mlp: "gelu" or "swiglu".
        qk_norm: RMSNorm on queries and keys.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, norm: str, mlp: str, qk_norm: bool):
        super().__init__()
        self.norm1 = make_norm(norm, dim, affine=False)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.norm2 = make_norm(norm, dim, affine=False)
        self.mlp = make_mlp(mlp, dim, mlp_ratio)
        # SiLU is applied once to the conditioning vector by the model (shared by all blocks).
        self.adaLN = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: nn.Module | None = None) -> torch.Tensor:
        mods = self.adaLN(c).unsqueeze(1).chunk(6, dim=-1)  # 6 x [B, 1, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope=rope)  # [B, N, D]
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))  # [B, N, D]


@torch.no_grad()
def adaln_zero_init(model: nn.Module, t_embed: nn.Module, modulations: list[nn.Linear]) -> None:
    """DiT's initialisation: xavier linears, N(0, 0.02) timestep MLP, and adaLN-Zero: the given
    modulation layers and ``model.final`` (its adaLN and output linear) start at zero, so every
    block starts as the identity and the network predicts zero."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for layer in (t_embed.mlp[0], t_embed.mlp[2]):
        nn.init.normal_(layer.weight, std=0.02)
    for layer in [*modulations, model.final.adaLN, model.final.linear]:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


class FinalLayer(nn.Module):
    """adaLN(x) -> linear to p*p*c values per token.  [B, N, D] -> [B, N, p*p*c]."""

    def __init__(self, dim: int, out: int, norm: str):
        super().__init__()
        self.norm = make_norm(norm, dim, affine=False)
        self.adaLN = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c).unsqueeze(1).chunk(2, dim=-1)  # 2 x [B, 1, D]
        return self.linear(modulate(self.norm(x), shift, scale))


class DiffusionTransformer(nn.Module):
    """v = model(z_t, t, cond): the flow-matching velocity for latents z_t [B, c, h, w].

    Args:
        config: a :class:`GeneratorConfig` (null fields are resolved from its size/style).
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        cfg = self.config = config.resolved()
        p, c, dim = cfg.patch_size, cfg.latent_channels, cfg.dim
        self.patch_embed = nn.Linear(p * p * c, dim)  # = Conv2d(kernel = stride = p)
        self._init_positions(cfg)
        self.t_embed = TimestepEmbedder(dim)
        self.conditioner = build_conditioner(cfg.num_classes, dim, cfg.class_dropout)
        self.blocks = nn.ModuleList(DiTBlock(dim, cfg.heads, cfg.mlp_ratio, cfg.norm, cfg.mlp, cfg.qk_norm)
                                    for _ in range(cfg.depth))
        self.rope = Rope2D(cfg.grid, dim // cfg.heads) if cfg.rope else None
        self.final = FinalLayer(dim, p * p * c, cfg.norm)
        self.initialize_weights()

    def _init_positions(self, cfg: GeneratorConfig) -> None:
        n = cfg.grid[0] * cfg.grid[1]
        self.pos_learned = None
        if cfg.pos_embed == "learned":
            self.pos_learned = nn.Parameter(sincos_2d(cfg.dim, cfg.grid).unsqueeze(0))  # [1, N, D]
        table = sincos_2d(cfg.dim, cfg.grid) if cfg.pos_embed == "sincos" else torch.zeros(n, cfg.dim)
        # Fixed table, a pure function of the config: not saved with the weights.
        self.register_buffer("pos_fixed", table.unsqueeze(0), persistent=False)  # [1, N, D]

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, N(0, 0.02) embedders, and adaLN-Zero (every
        modulation and the output layer start at zero, so each block starts as the identity)."""
        adaln_zero_init(self, self.t_embed, [block.adaLN for block in self.blocks])

    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """[B, c, h, w] -> [B, (h/p)*(w/p), p*p*c] (see :func:`patchify`)."""
        return patchify(z, self.config.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, p*p*c] -> [B, c, h, w]; the inverse of :meth:`patchify`."""
        return unpatchify(x, self.config.patch_size, self.config.latent_channels, self.config.grid)

    def condition_vector(self, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """SiLU(t-embedding + condition embedding): the input of every adaLN linear.  [B, D]."""
        return nn.functional.silu(self.t_embed(t) + self.conditioner(cond))

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, c, h, w] noisy latent, t [B] times in [0, 1], cond [B] labels -> v [B, c, h, w]."""
        x = self.patch_embed(self.patchify(z)) + self.pos_fixed  # [B, N, D]
        if self.pos_learned is not None:
            x = x + self.pos_learned
        c = self.condition_vector(t.expand(z.shape[0]), cond)  # [B, D]
        for block in self.blocks:
            x = block(x, c, rope=self.rope)  # [B, N, D]
        return self.unpatchify(self.final(x, c))  # [B, c, h, w]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self) -> float:
        """Forward FLOPs for one latent: 2 * (matmul weights) * tokens + attention scores/values.

        Counts multiply-adds of the token-wise linears and of the attention matrix products
        (nanoGPT's estimate); elementwise ops and the per-sample adaLN vectors are ignored.
        """
        cfg = self.config
        n = cfg.grid[0] * cfg.grid[1]
        token_weights = self.patch_embed.weight.numel() + self.final.linear.weight.numel()
        for block in self.blocks:
            token_weights += sum(m.weight.numel() for m in block.modules()
                                 if isinstance(m, nn.Linear) and m is not block.adaLN)
        attention = cfg.depth * 2 * (2 * n * n * cfg.dim)  # Q K^T and A V
        return 2.0 * token_weights * n + attention


def build_generator(config: GeneratorConfig, device: torch.device | str = "cpu") -> DiffusionTransformer:
    """Construct a model directly on ``device`` (``"meta"`` counts parameters without memory)."""
    with torch.device(device):
        return DiffusionTransformer(config)


def format_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n < 1e9 else f"{n / 1e9:.3f}B"
