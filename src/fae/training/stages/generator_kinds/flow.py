"""``kind: flow``: a STARFlow normalizing flow (``fae.generation.flow``) trained on the same
latent cache through the same loop.

Sections: the architecture is ``flow``, the sampler ``flow_sampling``. The loss is the exact NLL
per dimension (nats) of noise-augmented latents, also logged as ``bits_per_dim``; the export is a
:class:`fae.generation.FlowGenerator` folder that ``fae sample`` recognises.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fae.generation import FlowGenerator, build_flow
from fae.generation.flow import flow_loss
from fae.generation.flow_config import FLOW_SIZES, PUBLISHED_PARAMS
from fae.generation.model import format_params
from fae.training.stages.generator_kinds.base import GeneratorKind


class FlowKind(GeneratorKind):
    """The class-conditional STARFlow. Args: config: the stage's config."""

    section = "flow"
    sampling_section = "flow_sampling"
    sections = ("flow", "flow_sampling")
    unused_hint = "the flow is configured by flow / flow_sampling"

    def build(self, device: torch.device | str) -> nn.Module:
        return build_flow(self.config.flow, device)

    def loss(self, network: nn.Module, latents: torch.Tensor, labels: Any,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """NLL per dimension in nats of the latents plus ``flow.noise_std`` Gaussian noise."""
        return flow_loss(network, latents, self.condition(labels), self.config.flow.noise_std, generator)

    def loss_figures(self, loss: torch.Tensor | float) -> dict[str, torch.Tensor | float]:
        """The loss is an exact likelihood (of noisy latents): also in bits per dimension."""
        return {"bits_per_dim": loss / math.log(2)}

    def sampling_passes(self) -> float:
        """The KV-cached inversion visits every token of every block once, the cost of one forward
        pass (two with guidance: conditional and unconditional); the score-based denoising step is
        a forward and a backward pass (3 forward-equivalents); a fine-tuned decoder skips it."""
        sampling = self.config.flow_sampling
        return (2.0 if sampling.guided else 1.0) + (3.0 if sampling.score_step and self.config.flow.noise_std > 0
                                                    else 0.0)

    def wrap(self, network: nn.Module, stats: tuple[torch.Tensor, torch.Tensor],
             fae_identity: dict) -> FlowGenerator:
        return FlowGenerator(self.config.flow, *stats, sampling=self.config.flow_sampling,
                             fae_identity=fae_identity, network=network)

    def describe(self) -> dict[str, str]:
        cfg = self.config.flow.resolved()
        params = build_flow(cfg, "meta").num_params()
        size = cfg.size if FLOW_SIZES[cfg.size] == (cfg.deep_layers, cfg.shallow_blocks, cfg.shallow_layers,
                                                    cfg.dim) else "custom"
        published = PUBLISHED_PARAMS.get(size, "none for this size")
        heads = cfg.dim // cfg.head_dim
        return {"generator": f"STARFlow-{size}/{cfg.patch_size} (deep block {cfg.deep_layers} layers + "
                             f"{cfg.shallow_blocks} shallow x {cfg.shallow_layers}, width {cfg.dim}, {heads} "
                             f"heads, {cfg.style}) on {cfg.latent_channels}x{cfg.latent_size}x{cfg.latent_size} "
                             f"latents ({cfg.grid[0] * cfg.grid[1]} tokens): {format_params(params)} "
                             f"parameters; published: {published}",
                "flow": f"noise augmentation std {cfg.noise_std:g} (normalised latents), classes "
                        f"{cfg.num_classes} (label dropout {cfg.class_dropout:g}, conditioning "
                        f"{cfg.condition} blocks, class as {cfg.class_entry} token); soft clip "
                        f"{cfg.log_scale_clip:g} on {cfg.soft_clip_on}; {self._sampling_line()}"}

    def _sampling_line(self) -> str:
        """The stored sampler settings, as the dry run shows them."""
        sampling = self.config.flow_sampling
        post = (f"fine-tuned decoder {sampling.finetuned_decoder} (no score step)" if sampling.finetuned_decoder
                else f"denoise {sampling.denoise}")
        return f"sampling cfg_scale {sampling.cfg_scale:g}, {post}"
