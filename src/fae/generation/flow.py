"""STARFlow (Gu et al. 2025): an autoregressive normalizing flow on latents, made of TARFlow blocks
(Zhai et al. 2024) in a deep-shallow layout. Its config is ``fae.generation.flow_config``.

One TARFlow block is an affine autoregressive flow over the token sequence x [B, N, C] (C = p*p*c)
in the block's token order (raster order, or reversed in every other block). A causal transformer
reads the tokens before i and predicts the shift mu_i and log-scale a_i of token i:

    data -> noise   z_i = (x_i - mu_i(x_<i)) * exp(-a_i(x_<i))      log|det dz/dx| = -sum_i,c a_i,c
    noise -> data   x_i = z_i * exp(a_i(x_<i)) + mu_i(x_<i)          (token by token, i = 0 .. N-1)

The transformer input at position i is token i-1 (position 0: a learned start token), so the
output at position i only depends on x_<i and the Jacobian is triangular. The class enters a
conditioned block either added to the start token (``class_entry: start``) or, as in STARFlow, as
one token before the start token that every position attends to (``prefix``; its output is
dropped). The whole model stacks K shallow blocks and one deep block (data -> noise); sampling
inverts the deep block first, then the shallow ones. log p(x) = log N(z; 0, I) + sum over blocks
of log|det|. ``condition: deep`` (STARFlow's ``cond_top_only``) conditions the deep block only.

Training latents get Gaussian noise (``noise_std``) so the flow models a smooth density; after
sampling, the score step x + sigma^2 * grad log p(x) (Tweedie's formula, with the flow's own exact
likelihood through autograd) removes that noise, as TARFlow does; STARFlow's other option, a
decoder fine-tuned on noisy latents (``FlowSamplerConfig.finetuned_decoder``), skips that step.
Guidance: STARFlow's ``guided_affine``. Every block is called through ``forward`` (both directions), so DDP/FSDP hooks
see every use of its weights.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from fae.generation.conditioning import build_conditioner
from fae.generation.flow_config import FlowConfig, FlowSamplerConfig
from fae.generation.model import patchify, unpatchify
from fae.nn import KVCache, TransformerBlock, apply_rope, make_norm, rope_2d_angles

LOG_2PI = math.log(2 * math.pi)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 for the affine maps and log-determinants (fp64 stays fp64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def guided_affine(mu_c: torch.Tensor, a_c: torch.Tensor, mu_u: torch.Tensor, a_u: torch.Tensor,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """STARFlow's guidance for one token: sample from p_c^(1+w) / p_u^w with w = scale - 1.

    Both conditionals are Gaussians in x_i (N(mu, e^(2a))), so the guided one is Gaussian too, with
    precision (1+w)/sigma_c^2 - w/sigma_u^2 = (1 + w - w*s)/sigma_c^2, s = sigma_c^2/sigma_u^2:

        mu = ((1+w) mu_c - w s mu_u) / (1 + w - w s),    sigma = sigma_c / sqrt(1 + w - w s).

    s is clipped to <= 1 so the precision stays positive for every w > -1 (STARFlow does the same).
    At scale 1 (w = 0) this is exactly (mu_c, a_c).
    """
    w = scale - 1.0
    s = torch.exp(2.0 * (a_c - a_u)).clamp(max=1.0)  # [B, n, C]
    denom = 1.0 + w - w * s
    return ((1.0 + w) * mu_c - w * s * mu_u) / denom, a_c - 0.5 * torch.log(denom)


class SequenceRope(nn.Module):
    """2-D RoPE tables (``fae.nn.rope``) listed in a block's token order: sequence position i
    rotates with the grid position of the token predicted there. ``prefix`` leading positions
    (the class token) get angle 0, no rotation: STARFlow puts its one text token at position 0 of
    every RoPE axis."""

    def __init__(self, grid: tuple[int, int], head_dim: int, reverse: bool, prefix: int = 0):
        super().__init__()
        angles = rope_2d_angles(grid, head_dim)  # [N, d/2], raster order
        if reverse:
            angles = angles.flip(0)
        angles = torch.cat([angles.new_zeros(prefix, angles.shape[1]), angles])  # [prefix + N, d/2]
        # Not saved: a pure function of (grid, head_dim, order).
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def at(self, start: int, length: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The rotation of sequence positions [start, start + length) for [B, H, length, d]."""
        cos, sin = self.cos[start:start + length], self.sin[start:start + length]
        return lambda x: apply_rope(x, cos.to(x.device), sin.to(x.device))


class TARFlowBlock(nn.Module):
    """One affine autoregressive flow block over tokens [B, N, C] (module docstring).

    Args:
        channels: values per token C.
        dim: transformer width; heads = dim / head_dim.
        layers: transformer layers (the deep block has many, shallow blocks few).
        head_dim, mlp_ratio, style, qk_norm: of every ``fae.nn.TransformerBlock``.
        grid: token grid (h/p, w/p), for 2-D RoPE.
        reverse: this block reads the tokens in reversed raster order.
        num_classes: > 0: the block is class-conditional (row ``num_classes`` = null class).
        log_scale_clip: the c of the soft clip c * tanh(v / c) (0 = none).
        class_entry: "start" (the class embedding is added to the start token) or "prefix"
            (STARFlow: the class embedding is one token before the start token).
        soft_clip_on: "log_scale" (clip the log-scales) or "affine" (STARFlow's soft_clip: clip
            the shifts too).
    """

    def __init__(self, channels: int, dim: int, layers: int, head_dim: int, mlp_ratio: float, style: str,
                 qk_norm: bool, grid: tuple[int, int], reverse: bool, num_classes: int,
                 log_scale_clip: float = 0.0, class_entry: str = "start", soft_clip_on: str = "log_scale"):
        super().__init__()
        self.reverse, self.log_scale_clip = reverse, log_scale_clip
        self.clip_shift = soft_clip_on == "affine"
        self.conditioned = num_classes > 0
        # Positions before the start token whose outputs predict nothing: the class token.
        self.prefix = 1 if self.conditioned and class_entry == "prefix" else 0
        self.proj_in = nn.Linear(channels, dim)
        self.start = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        # Label dropout happens once per sample in STARFlow.forward, for all blocks alike.
        self.conditioner = build_conditioner(num_classes, dim, dropout=0.0)
        self.layers = nn.ModuleList(TransformerBlock(dim, dim // head_dim, mlp_ratio, style, qk_norm, head_dim)
                                    for _ in range(layers))
        self.norm = make_norm("rms" if style == "lightning" else "layer", dim)
        self.proj_out = nn.Linear(dim, 2 * channels)
        nn.init.zeros_(self.proj_out.weight)  # every block starts as the identity map
        nn.init.zeros_(self.proj_out.bias)
        self.rope = SequenceRope(grid, head_dim, reverse, self.prefix)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, inverse: bool = False,
                null_cond: torch.Tensor | None = None, cfg_scale: float = 1.0, kv_cache: bool = True):
        """data -> noise: x [B, N, C] -> (z [B, N, C], log|det| [B]).  ``inverse``: noise -> data,
        z -> x [B, N, C], guided when ``null_cond`` is given and the block is conditioned."""
        if inverse:
            return self._ordered(self._decode(self._ordered(x), cond, null_cond, cfg_scale, kv_cache))
        xs = self._ordered(x)  # [B, N, C] in block order
        h = self._transformer(self._inputs(xs, cond))[:, self.prefix:]  # [B, N, D]: class token dropped
        mu, a = self._affine(h)  # 2 x [B, N, C]
        z = (_at_least_fp32(xs) - mu) * torch.exp(-a)
        return self._ordered(z.to(x.dtype)), -a.sum(dim=(1, 2))

    def _ordered(self, x: torch.Tensor) -> torch.Tensor:
        """Raster order <-> block order (a flip is its own inverse)."""
        return x.flip(1) if self.reverse else x

    def _first(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The inputs before x_0: the start token (+ class embedding), or [class token, start
        token] with a prefix.  [B, 1 + prefix, D]."""
        first = self.start.expand(batch, -1, -1)  # [B, 1, D]
        embedding = self.conditioner(cond)  # [B, D], or 0.0 when unconditional
        if not isinstance(embedding, torch.Tensor):
            return first
        if self.prefix:
            return torch.cat([embedding.unsqueeze(1), first], dim=1)  # [B, 2, D]
        return first + embedding.unsqueeze(1)

    def _inputs(self, xs: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Teacher forcing: [(class,) first, x_0, .., x_{N-2}] embedded.  [B, prefix + N, D]."""
        return torch.cat([self._first(cond, xs.shape[0]), self.proj_in(xs[:, :-1])], dim=1)

    def _transformer(self, h: torch.Tensor, start: int = 0, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Causal layers over positions [start, start + n) of h [B, n, D] (earlier ones cached)."""
        rope = self.rope.at(start, h.shape[1])
        for i, layer in enumerate(self.layers):
            h = layer(h, rope=rope, causal=True, cache=None if caches is None else caches[i])
        return h  # [B, n, D]

    def _affine(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, a) of the tokens at these positions, in >= fp32, soft-clipped.  2 x [B, n, C]."""
        out = _at_least_fp32(self.proj_out(self.norm(h)))  # [B, n, 2C]
        if self.log_scale_clip > 0 and self.clip_shift:  # STARFlow's soft_clip: mu and a alike
            out = self._soft_clip(out)
        mu, a = out.chunk(2, dim=-1)
        if self.log_scale_clip > 0 and not self.clip_shift:
            a = self._soft_clip(a)
        return mu, a

    def _soft_clip(self, v: torch.Tensor) -> torch.Tensor:
        """c * tanh(v / c): ~v near 0, bounded by +-c."""
        return self.log_scale_clip * torch.tanh(v / self.log_scale_clip)

    def _decode(self, zs: torch.Tensor, cond: torch.Tensor | None, null_cond: torch.Tensor | None,
                cfg_scale: float, kv_cache: bool) -> torch.Tensor:
        """Invert token by token in block order: zs [B, N, C] -> xs [B, N, C]."""
        B, N, _ = zs.shape
        guided = null_cond is not None and self.conditioned
        conds = torch.cat([cond, null_cond]) if guided else cond  # [B', ...], B' = 2B when guided
        xs = torch.zeros_like(zs)
        caches = [KVCache() for _ in self.layers] if kv_cache else None
        h = self._first(conds, 2 * B if guided else B)  # [B', 1 + prefix, D]: the inputs before x_0
        for i in range(N):
            position = i + self.prefix  # the sequence position that predicts token i
            if caches is not None:
                start = 0 if i == 0 else position  # step 0 feeds the class token too
                out = self._transformer(h, start=start, caches=caches)[:, -1:]  # [B', 1, D]
            else:  # the whole sequence again; positions > i see only zeros after them (causal)
                decoded = torch.cat([xs, xs]) if guided else xs
                out = self._transformer(self._inputs(decoded, conds))[:, position:position + 1]
            mu, a = self._affine(out)  # 2 x [B', 1, C]
            if guided:
                (mu_c, mu_u), (a_c, a_u) = mu.chunk(2), a.chunk(2)  # conditional | null halves
                mu, a = guided_affine(mu_c, a_c, mu_u, a_u, cfg_scale)  # 2 x [B, 1, C]
            x_i = _at_least_fp32(zs[:, i:i + 1]) * torch.exp(a) + mu  # [B, 1, C]
            xs[:, i:i + 1] = x_i.to(xs.dtype)
            if caches is not None and i + 1 < N:
                h = self.proj_in(xs[:, i:i + 1])  # the input of position i + 1
                h = torch.cat([h, h]) if guided else h
        return xs


class STARFlow(nn.Module):
    """Latents x [B, c, h, w] (normalised scale) <-> noise z [B, c, h, w]; exact log-likelihood.

    Args:
        config: a :class:`FlowConfig` (null size fields resolved from its preset).
    """

    def __init__(self, config: FlowConfig):
        super().__init__()
        cfg = self.config = config.resolved()
        K = cfg.shallow_blocks
        blocks = []
        for k in range(K + 1):  # data -> noise: K shallow blocks, then the deep block
            deep = k == K
            conditioned = deep or cfg.condition == "all"
            blocks.append(TARFlowBlock(
                cfg.token_channels, cfg.dim, cfg.deep_layers if deep else cfg.shallow_layers, cfg.head_dim,
                cfg.mlp_ratio, cfg.style, cfg.qk_norm, cfg.grid,
                reverse=(K - k) % 2 == 1,  # the deep block reads in raster order; orders alternate
                num_classes=cfg.num_classes if conditioned else 0, log_scale_clip=cfg.log_scale_clip,
                class_entry=cfg.class_entry, soft_clip_on=cfg.soft_clip_on))
        self.blocks = nn.ModuleList(blocks)

    @property
    def conditioner(self) -> nn.Module:
        """The deep block's conditioner (``check`` labels, ``null_like``); always conditioned."""
        return self.blocks[-1].conditioner

    @property
    def dims(self) -> int:
        """Dimensions D = c * h * w of one latent."""
        c, h, w = self.config.latent_shape
        return c * h * w

    def _drop_labels(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """Training: replace labels by the null class with probability class_dropout (CFG)."""
        if cond is None or not self.training or self.config.class_dropout == 0:
            return cond
        drop = torch.rand(cond.shape, device=cond.device) < self.config.class_dropout
        return torch.where(drop, self.conditioner.null_like(cond), cond)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """data -> noise: x [B, c, h, w] -> (z [B, c, h, w], summed log|det dz/dx| [B])."""
        cond = self._drop_labels(cond)
        h = patchify(x, self.config.patch_size)  # [B, N, C]
        logdet = x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))
        for block in self.blocks:
            h, block_logdet = block(h, cond)
            logdet = logdet + block_logdet
        return self._unpatchify(h), logdet

    def _unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        return unpatchify(h, self.config.patch_size, self.config.latent_channels, self.config.grid)

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log-density (nats) of x [B, c, h, w]: log N(z; 0, I) + log|det|.  [B]."""
        z, logdet = self(x, cond)
        return logdet - 0.5 * (_at_least_fp32(z).square() + LOG_2PI).flatten(1).sum(dim=1)

    def nll_per_dim(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(x) / D in nats per dimension.  [B]. (Bits per dimension: divide by ln 2.)"""
        return -self.log_prob(x, cond) / self.dims

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None, null_cond: torch.Tensor | None = None,
                cfg_scale: float = 1.0, kv_cache: bool = True) -> torch.Tensor:
        """noise -> data: z [B, c, h, w] -> x [B, c, h, w]; deep block first, then the shallow ones.
        Guided (STARFlow) in every conditioned block when ``null_cond`` is given."""
        h = patchify(z, self.config.patch_size)  # [B, N, C]
        for block in reversed(self.blocks):
            h = block(h, cond, inverse=True, null_cond=null_cond, cfg_scale=cfg_scale, kv_cache=kv_cache)
        return self._unpatchify(h)

    def denoise(self, x: torch.Tensor, cond: torch.Tensor | None = None, sigma: float | None = None) -> torch.Tensor:
        """Tweedie's step x + sigma^2 * grad_x log p(x): the posterior mean of the clean latent
        under the flow's density of noisy latents (sigma = noise_std by default)."""
        sigma = self.config.noise_std if sigma is None else sigma
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            score, = torch.autograd.grad(self.log_prob(x, cond).sum(), x)  # [B, c, h, w]
        return (x + sigma ** 2 * score).detach()

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond: torch.Tensor | None, config: FlowSamplerConfig) -> torch.Tensor:
        """Latents [B, c, h, w] (normalised scale) from noise [B, c, h, w]: invert (guided when
        ``config.cfg_scale`` != 1), then the score step when ``config.score_step`` (``denoise``
        without a ``finetuned_decoder``: that decoder takes the noisy samples as they are)."""
        null = self.conditioner.null_like(cond) if config.guided and cond is not None else None
        x = self.inverse(noise, cond, null, config.cfg_scale, config.kv_cache)
        if config.score_step and self.config.noise_std > 0:
            x = self.denoise(x, cond)
        return x

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def flow_loss(model: nn.Module, latents: torch.Tensor, cond: torch.Tensor | None, noise_std: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean NLL per dimension (nats) of noise-augmented latents x + noise_std * eps.

    ``model`` is called through ``forward`` (DDP-wrapped in training). ``generator`` fixes the
    augmentation noise (evaluation); training draws from the global RNG the engine seeds.
    """
    eps = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    z, logdet = model(latents + noise_std * eps, cond)  # [B, c, h, w], [B]
    dims = z[0].numel()
    nll = 0.5 * (_at_least_fp32(z).square() + LOG_2PI).flatten(1).sum(dim=1) - logdet  # [B] nats
    return (nll / dims).mean()


def build_flow(config: FlowConfig, device: torch.device | str = "cpu") -> STARFlow:
    """Construct a flow directly on ``device`` (``"meta"`` counts parameters without memory)."""
    with torch.device(device):
        return STARFlow(config)
