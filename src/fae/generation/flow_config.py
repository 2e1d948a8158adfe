"""Config of the autoregressive normalizing-flow generator (STARFlow, Gu et al. 2025; TARFlow,
Zhai et al. 2024) and of its sampler; the network lives in ``fae.generation.flow``.

Layout (data -> noise, the direction of the likelihood):

    x --shallow block 1 .. shallow block K (shallow_layers each)--> deep block (deep_layers) --> z ~ N(0, I)

Sizes are (deep_layers, shallow_blocks, shallow_layers, dim): STARFlow's ImageNet-256 default is
one 18-layer deep block and five 2-layer shallow blocks at width 2048 with 64-wide heads (1.4B
parameters, the public release's ``TarFlow_XLv2_1``); S and B are our smaller choices for
experiments.

STARFlow's public settings (github.com/apple/ml-starflow: ``transformer_flow.py`` and
``configs/starflow_3B_t2i_256x256.yaml``), each a key here; the defaults keep our earlier readings so
that existing runs, exports and experiment keys stay the same, and ``configs/imagenet256/starflow_*``
select the public ones:

- ``condition: deep`` = ``cond_top_only: 1``: only the deep (top) block sees the class.
- ``class_entry: prefix``: the class is one extra token in front of the sequence (a one-hot label
  through a linear layer, the way STARFlow feeds ImageNet labels as a one-token "caption"), which
  every position attends to; ``start`` adds the class embedding to the start token instead.
- ``soft_clip_on: affine`` = ``soft_clip``: c * tanh(. / c) bounds the whole output of the block's
  last layer, shifts included; ``log_scale`` bounds the log-scales only.
- patch 1 on SD-VAE latents (32x32x4 -> 1,024 tokens), as ``TarFlow_XLv2_1`` (``patch_size=1``).
- sampling: ``finetuned_decoder`` (``FlowSamplerConfig``) = ``finetuned_vae``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from fae.config import OMIT_IF_DEFAULT, check_choices
from fae.errors import ConfigError
from fae.generation.latent_grid import LatentGrid

# name -> (deep_layers, shallow_blocks, shallow_layers, dim).
FLOW_SIZES: dict[str, tuple[int, int, int, int]] = {
    "S": (8, 3, 2, 384),  # our choice
    "B": (12, 5, 2, 768),  # our choice
    "XL": (18, 5, 2, 2048),  # STARFlow ImageNet 256x256 default
}

# name -> the published parameter count the dry run prints beside ours.
PUBLISHED_PARAMS: dict[str, str] = {"XL": "1.4B (STARFlow, ImageNet 256x256 default; Gu et al. 2025)"}


@dataclass
class FlowConfig(LatentGrid):
    """Architecture of the STARFlow generator (saved in the export's config.json).

    Args:
        size: preset in ``FLOW_SIZES`` giving deep_layers / shallow_blocks / shallow_layers / dim
            where those are left null.
        deep_layers: transformer layers of the deep block (the one next to the noise).
        shallow_blocks: number of shallow flow blocks (between the data and the deep block).
        shallow_layers: transformer layers of each shallow block.
        dim: transformer width of every block.
        head_dim: width of one attention head (STARFlow: 64); heads = dim / head_dim.
        mlp_ratio: MLP hidden ratio.
        style: "vit" (LayerNorm + GELU MLP, STARFlow's default) or "lightning" (RMSNorm + SwiGLU).
        qk_norm: RMSNorm on queries and keys.
        patch_size: 1 (FAE latents 16x16x32: 256 tokens; SD-VAE latents 32x32x4: 1,024 tokens, as
            STARFlow's ``TarFlow_XLv2_1``) or 2 (32x32x4 -> 256 tokens of 16 values).
        latent_channels, latent_size: latent shape (c, h = w); null = from the FAE export or the
            latent cache, as for the diffusion generator.
        num_classes: class-conditional with this many classes (0 = unconditional); class
            ``num_classes`` is the null class used for guidance.
        class_dropout: probability a training label is replaced by the null class, once per
            sample for every block (STARFlow: 0.1).
        condition: which blocks see the class: "deep" = STARFlow's public ``cond_top_only: 1``
            (only the deep block is conditioned; the shallow blocks are unconditional, unguided
            and hold no class table), or "all" (every block; our earlier choice, the default).
        class_entry: how the class enters a conditioned block: "prefix" = STARFlow's (the label
            is one token placed before the start token; every position attends to it, its own
            output is dropped; no RoPE rotation, as STARFlow's text position 0) or "start" (the
            class embedding is added to the start token; our earlier choice, the default).
        noise_std: std of the Gaussian noise added to the (per-channel normalised) training
            latents, and the sigma of the denoising step after sampling (STARFlow: 0.3).
        log_scale_clip: the c of the soft clip c * tanh(v / c) (STARFlow's ``soft_clip``, 4 in its
            public config); 0 disables it.
        soft_clip_on: what the clip bounds: "affine" = STARFlow's ``soft_clip`` (every output of
            the block's last linear layer: shifts mu and log-scales a), or "log_scale" (a only;
            our earlier reading, the default).
    """

    SECTION = "flow"  # config section named in errors (fae.generation.latent_grid)

    size: Literal["S", "B", "XL"] = "XL"
    deep_layers: int | None = None
    shallow_blocks: int | None = None
    shallow_layers: int | None = None
    dim: int | None = None
    head_dim: int = 64
    mlp_ratio: float = 4.0
    style: Literal["vit", "lightning"] = "vit"
    qk_norm: bool = False
    patch_size: int = 1
    latent_channels: int | None = None
    latent_size: int | None = None
    num_classes: int = 1000
    class_dropout: float = 0.1
    condition: Literal["all", "deep"] = "all"
    noise_std: float = 0.3
    log_scale_clip: float = 0.0
    # Keys added later: left out of saved configs while at their default, so the run folders,
    # exports and experiment keys written before they existed stay the same.
    class_entry: Literal["start", "prefix"] = field(default="start", metadata=OMIT_IF_DEFAULT)
    soft_clip_on: Literal["log_scale", "affine"] = field(default="log_scale", metadata=OMIT_IF_DEFAULT)

    def resolved(self) -> FlowConfig:
        """A copy with every null size field filled from ``size``; the latent shape must be known."""
        for key in ("latent_channels", "latent_size"):
            if getattr(self, key) is None:
                raise ConfigError(f"config key 'flow.{key}' is null: set it, or let `fae train "
                                  f"generator` read it from the FAE export (data.fae) or the latent "
                                  f"cache (data.cache)")
        preset = dict(zip(("deep_layers", "shallow_blocks", "shallow_layers", "dim"), FLOW_SIZES[self.size]))
        out = dataclasses.replace(self, **{k: v if getattr(self, k) is None else getattr(self, k)
                                           for k, v in preset.items()})
        out.validate()
        return out

    def validate(self) -> None:
        self.check_at_least(("deep_layers", "dim", "head_dim", "patch_size", "latent_channels", "latent_size"), 1)
        self.check_at_least(("shallow_blocks", "shallow_layers"), 0)
        if self.shallow_blocks and self.shallow_layers == 0:
            raise ConfigError("config key 'flow.shallow_layers' is 0 while flow.shallow_blocks is "
                              f"{self.shallow_blocks}: a flow block needs at least one layer")
        self.check_patch()
        if self.dim is not None and self.dim % self.head_dim:
            raise ConfigError(f"config key 'flow.dim' ({self.dim}) must be divisible by flow.head_dim "
                              f"({self.head_dim})")
        if self.head_dim % 4:
            raise ConfigError(f"config key 'flow.head_dim' must be divisible by 4 (2-D RoPE), got "
                              f"{self.head_dim}")
        if self.num_classes < 0:
            raise ConfigError(f"config key 'flow.num_classes' must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ConfigError(f"config key 'flow.class_dropout' must be in [0, 1), got {self.class_dropout}")
        if self.noise_std < 0:
            raise ConfigError(f"config key 'flow.noise_std' must be >= 0, got {self.noise_std}")
        if self.log_scale_clip < 0:
            raise ConfigError(f"config key 'flow.log_scale_clip' must be >= 0, got {self.log_scale_clip}")
        check_choices(self, "flow")

    @property
    def token_channels(self) -> int:
        """Values per token: p * p * c."""
        return self.patch_size ** 2 * self.latent_channels


@dataclass
class FlowSamplerConfig:
    """How to sample the flow (invert its blocks token by token).

    Args:
        cfg_scale: guidance scale, 1 = plain conditional sampling. STARFlow's guidance weight is
            w = cfg_scale - 1 (it samples each token from p_c^(1+w) / p_u^w, see
            ``fae.generation.flow.guided_affine``); every conditioned block is guided.
        denoise: after sampling, take the score step x + noise_std^2 * grad log p(x) with the
            flow's own likelihood (the model was trained on noise-augmented latents).
        kv_cache: reuse keys/values of decoded tokens (the fast path); false recomputes the whole
            prefix per token (for testing; the same result up to float round-off).
        finetuned_decoder: STARFlow's other post-processing, ``finetuned_vae`` (the default of its
            sample.py): an FAE export folder whose pixel decoder was fine-tuned to decode noisy
            latents z + noise_std * eps (the flow's training input), so the flow's samples are
            decoded as the inversion leaves them. When set, the score step is skipped (STARFlow
            skips its denoising whenever finetuned_vae is set) and ``fae sample`` decodes with
            this export in place of ``--fae`` (``fae.generation.decode.decoder_folder``); it must
            share the FAE's identity (encoder and feature decoder). Null (default): the score
            step (``denoise``) and the FAE's own decoder.
    """

    cfg_scale: float = 1.0
    denoise: bool = True
    kv_cache: bool = True
    finetuned_decoder: str | None = field(default=None, metadata=OMIT_IF_DEFAULT)

    def validate(self) -> None:
        if self.cfg_scale <= 0:
            raise ConfigError(f"flow sampler key 'cfg_scale' (flow_sampling.cfg_scale in a training "
                              f"config, sampling.cfg_scale for `fae sample`) must be > 0 (1 = no "
                              f"guidance), got {self.cfg_scale}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    @property
    def score_step(self) -> bool:
        """Take the score-based denoising step: ``denoise`` and no fine-tuned decoder."""
        return self.denoise and not self.finetuned_decoder

    def unguided(self) -> FlowSamplerConfig:
        """The same sampler without guidance."""
        return dataclasses.replace(self, cfg_scale=1.0)
