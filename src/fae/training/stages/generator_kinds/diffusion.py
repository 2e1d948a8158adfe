"""``kind: diffusion``: a SiT / LightningDiT (``fae.generation.model``) trained with the
flow-matching velocity loss of ``fae.generation.transport`` (FAE paper, Sec. 3.3).

Sections: the architecture is ``model``, the path and t-sampling ``transport``, the sampler
``sampling``. The export is a :class:`fae.generation.Generator` folder.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fae.generation import SIZES, Generator, Transport, build_generator
from fae.generation.model import format_params
from fae.generation.samplers import GuidedVelocity, integrate
from fae.training.stages.generator_kinds.base import GeneratorKind


class DiffusionKind(GeneratorKind):
    """The class-conditional diffusion transformer. Args: config: the stage's config."""

    section = "model"
    sections = ("model", "transport", "sampling")
    unused_hint = "set kind: flow or kind: mmdit to use it"

    def __init__(self, config: Any):
        super().__init__(config)
        self.transport = Transport(config.transport)

    def build(self, device: torch.device | str) -> nn.Module:
        return build_generator(self.config.model, device)

    def loss(self, network: nn.Module, latents: torch.Tensor, labels: Any,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The velocity loss of the configured transport."""
        return self.transport.loss(network, latents, self.condition(labels), generator=generator)

    def sampling_passes(self) -> float:
        """Counted by running the real integrator and guidance code on a stand-in network that
        returns zeros (steps x model calls per step x CFG branches where w != 1)."""
        items = []

        def stand_in(x, t, cond):
            items.append(x.shape[0])
            return torch.zeros_like(x)

        cond = torch.zeros(1, dtype=torch.long)  # one sample; any condition enables CFG branches
        sampling, trained_shift = self.config.sampling, self.config.transport.shift or 1.0
        velocity = GuidedVelocity(stand_in, cond, cond, sampling, shift=sampling.grid_shift(trained_shift))
        integrate(velocity, torch.zeros(1, 1), sampling, shift=trained_shift)
        return float(sum(items))

    def wrap(self, network: nn.Module, stats: tuple[torch.Tensor, torch.Tensor], fae_identity: dict) -> Generator:
        return Generator(self.config.model, self.config.transport, *stats, sampling=self.config.sampling,
                         fae_identity=fae_identity, network=network)

    def describe(self) -> dict[str, str]:
        cfg = self.config.model.resolved()
        style = {"sit": "SiT", "lightningdit": "LightningDiT"}[cfg.style]
        blocks = f"norm={cfg.norm}, mlp={cfg.mlp}, rope={cfg.rope}, qk_norm={cfg.qk_norm}"
        params = build_generator(cfg, "meta").num_params()
        size = cfg.size if SIZES[cfg.size] == (cfg.depth, cfg.dim, cfg.heads) else "custom"
        return {"generator": f"{style}-{size}/{cfg.patch_size} ({cfg.depth} x {cfg.dim}, {cfg.heads} "
                             f"heads; {blocks}) on {cfg.latent_channels}x{cfg.latent_size}x"
                             f"{cfg.latent_size} latents: {format_params(params)} parameters",
                "transport": f"{self.config.transport.time_sampling} t, shift {self.config.transport.shift} "
                             f"(paper form; t = 1 is noise), cosine velocity loss weight "
                             f"{self.config.transport.cosine_weight:g}"}
