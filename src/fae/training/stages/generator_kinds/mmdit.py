"""``kind: mmdit``: the text-to-image MMDiT (``fae.generation.mmdit``, FAE paper Sec. 5.2) on a
captioned latent cache, with the transport and sampler of the diffusion kind.

Sections: the architecture is ``mmdit``, the frozen text encoder ``text`` (embeddings read from the
cache, whose manifest must name the same encoder, or computed online from the cached captions),
plus ``transport`` and ``sampling``. Captions are replaced by the learned null caption with
probability ``mmdit.caption_dropout`` (CFG training). The export is a
:class:`fae.generation.TextToImageGenerator` folder (``fae sample --prompts``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fae.data.latent_cache import CaptionLatentDataset, LatentCache
from fae.errors import ConfigError, LatentCacheError
from fae.generation import MMDiTConfig, TextCondition, TextToImageGenerator, build_mmdit
from fae.generation.mmdit_config import MMDIT_SIZES, PUBLISHED_MMDIT_PARAMS
from fae.generation.model import format_params
from fae.training.stages.generator_kinds.diffusion import DiffusionKind


class MMDiTKind(DiffusionKind):
    """The text-conditioned MMDiT. Args: config: the stage's config."""

    section = "mmdit"
    sections = ("mmdit", "text", "transport", "sampling")
    unused_hint = "the MMDiT is configured by mmdit / text"

    def __init__(self, config: Any):
        super().__init__(config)
        self.text_encoder = None  # loaded in setup for text.embeddings: online

    @classmethod
    def complete(cls, architecture: MMDiTConfig, config: Any) -> MMDiTConfig:
        """The text widths from the text encoder's registry entry or local config.json (no weights)."""
        config.text.validate()
        info = config.text.info()
        return architecture.with_text(info.dim, info.pooled_dim, f"text encoder '{info.name}' (text.encoder)")

    def text_identity(self) -> dict:
        """What a latent cache's text embeddings must have been made with (no weights needed)."""
        info, text = self.config.text.info(), self.config.text
        return {"name": info.name, "max_length": text.max_length or info.max_length, "dim": info.dim,
                "pooled_dim": info.pooled_dim}

    def build(self, device: torch.device | str) -> nn.Module:
        return build_mmdit(self.config.mmdit, device)

    def setup(self, cache: LatentCache, device: torch.device) -> None:
        """The cache must hold captions, and embeddings of this text encoder unless they are
        computed online (then the encoder is loaded here)."""
        if not cache.has_captions:
            raise LatentCacheError(f"latent cache '{self.config.data.cache}' holds no captions; kind: mmdit "
                                   f"needs a cache written from a captioned dataset (data.name: captions "
                                   f"or webdataset in `fae cache-latents`)")
        if self.config.text.embeddings == "cache":
            cache.check_text_encoder(self.text_identity())
        else:
            self.text_encoder = self.config.text.load(device)

    def dataset(self, cache: LatentCache, stats: tuple[torch.Tensor, torch.Tensor]) -> Dataset:
        """Normalised latents with their captions, or with the cached text embeddings."""
        return CaptionLatentDataset(cache, *stats, flip=self.config.data.flip,
                                    embeddings=self.config.text.embeddings == "cache")

    def synthetic_conditions(self, size: int, device: torch.device | str) -> list:
        """Cached text embeddings: tokens [B, L, D], mask [B, L], pooled [B, P]."""
        if self.config.text.embeddings != "cache":
            raise ConfigError("fae plan needs text.embeddings: cache (captions encoded online depend on "
                              "the text encoder's weights and tokenizer)")
        text = self.text_identity()
        return [torch.randn(size, text["max_length"], text["dim"], device=device),
                torch.ones(size, text["max_length"], dtype=torch.bool, device=device),
                torch.randn(size, text["pooled_dim"], device=device)]

    def eval_conditions(self, items: list[tuple], device: torch.device) -> Any:
        """Captions (online text encoding), or the stacked cached embeddings (tokens, mask, pooled)."""
        if len(items[0]) == 2:
            return [item[1] for item in items]
        return [torch.stack([item[k] for item in items]).to(device) for k in (1, 2, 3)]

    def condition(self, labels: Any) -> TextCondition:
        """Captions encoded now (a list of strings, online), or the cached embeddings."""
        if self.text_encoder is not None:
            return TextCondition(*self.text_encoder.encode(list(labels)))
        return TextCondition(*labels)

    def grid_prompts(self, cache: LatentCache, n: int) -> list[str]:
        """The first captions of the cache, cycled."""
        captions = cache.captions()
        return [captions[i % len(captions)] for i in range(n)]

    def wrap(self, network: nn.Module, stats: tuple[torch.Tensor, torch.Tensor],
             fae_identity: dict) -> TextToImageGenerator:
        """The export records how to load the text encoder; an online one is attached as it is."""
        gen = TextToImageGenerator(self.config.mmdit, self.config.transport, *stats,
                                   sampling=self.config.sampling, fae_identity=fae_identity,
                                   text={**self.config.text.record(), "identity": self.text_identity()},
                                   network=network)
        if self.text_encoder is not None:
            gen.attach_text_encoder(self.text_encoder)
        return gen

    def describe(self) -> dict[str, str]:
        cfg = self.config.mmdit.resolved()
        network = build_mmdit(cfg, "meta")
        blocks = sum(p.numel() for p in network.blocks.parameters())
        size = cfg.size if MMDIT_SIZES[cfg.size] == (cfg.depth, cfg.dim, cfg.heads) else "custom"
        published = PUBLISHED_MMDIT_PARAMS.get(size, "none for this size")
        info, text = self.config.text.info(), self.config.text
        return {"generator": f"MMDiT-{size}/{cfg.patch_size} ({cfg.depth} x {cfg.dim}, {cfg.heads} heads x "
                             f"{cfg.dim // cfg.heads}, MLP ratio {cfg.mlp_ratio:g}, qk_norm={cfg.qk_norm}, "
                             f"2-D RoPE on latent tokens={cfg.rope}, text tokens unrotated) on "
                             f"{cfg.latent_channels}x{cfg.latent_size}x{cfg.latent_size} latents: "
                             f"{format_params(network.num_params())} parameters (the trainable network: "
                             f"{format_params(blocks)} in the {cfg.depth} joint blocks"
                             f"{', last text stream pre-only' if cfg.context_pre_only else ''}, the rest in "
                             f"patch/text/pooled/timestep embedders, null caption and final layer; the "
                             f"frozen text encoder is not counted); published: {published}",
                "text": f"{info.name} ({info.description}; tokens {info.dim}-d, pooled {info.pooled_dim}-d, "
                        f"{text.max_length or info.max_length} tokens), embeddings {text.embeddings}; "
                        f"caption dropout {cfg.caption_dropout:g}",
                "transport": f"{self.config.transport.time_sampling} t, shift {self.config.transport.shift} "
                             f"(paper form; t = 1 is noise)"}
