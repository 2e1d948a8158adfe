"""``FlowGenerator``: a trained STARFlow (``fae.generation.flow``) ready to sample, and its export.

The export folder has the generators' layout (``fae.generation.generator``): ``config.json`` with
``format: fae-flow-generator``, the resolved architecture (``model``), the default sampler settings
(``sampling``) and the FAE identity (``fae``); ``model.safetensors`` with the EMA weights under
``model.`` and the latent statistics. :func:`load_generator` opens either kind of export.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from fae.config import from_dict, to_dict
from fae.errors import CheckpointError
from fae.export import read_export_config, resolve_folder
from fae.generation.flow import STARFlow
from fae.generation.flow_config import FlowConfig, FlowSamplerConfig
from fae.generation.generator import Generator, LatentGenerator
from fae.generation.seeding import randn_per_sample, sample_generators
from fae.generation.t2i_generator import TextToImageGenerator


class FlowGenerator(LatentGenerator):
    """STARFlow + latent statistics.

    Args:
        flow_config: architecture of the flow (``FlowConfig``; its noise_std is the denoising sigma).
        latent_mean, latent_std: per-channel statistics [c] used to normalise the training latents.
        sampling: default sampler settings (:class:`FlowSamplerConfig`).
        fae_identity: the manifest entry of the FAE whose latents this models (checked by ``fae sample``).
        network: an existing flow to wrap (the EMA model in training); ``flow_config`` is then ignored.
    """

    export_format = "fae-flow-generator"

    def __init__(self, flow_config: FlowConfig, latent_mean: torch.Tensor | None = None,
                 latent_std: torch.Tensor | None = None, sampling: FlowSamplerConfig | None = None,
                 fae_identity: dict[str, Any] | None = None, network: STARFlow | None = None):
        super().__init__(network if network is not None else STARFlow(flow_config), latent_mean, latent_std,
                         sampling or FlowSamplerConfig(), fae_identity)

    def _sample_batch(self, indices: list[int], cond: torch.Tensor | None, seed: int,
                      config: FlowSamplerConfig) -> torch.Tensor:
        config.validate()
        device = self.latent_mean.device
        noise = randn_per_sample(sample_generators(seed, indices), self.config.latent_shape)  # [B, c, h, w]
        dtype = next(self.model.parameters()).dtype
        x = self.model.sample(noise.to(device, dtype), None if cond is None else cond.to(device), config)
        return self.denormalize(x.float()).cpu()

    @torch.no_grad()
    def bits_per_dim(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact bits per dimension [B] of FAE-scale latents under the flow, in the network's
        (normalised) scale: -log2 p((z - mean) / std) / D. Add sum(log2 std) / c to get the
        density of the FAE-scale latents. The flow models noise-augmented latents, so feed
        latents + noise_std * eps for the figure it was trained on."""
        x = self.normalize(latents.to(self.latent_mean.device))
        labels = None if labels is None else labels.to(x.device)
        return self.model.nll_per_dim(x, labels) / math.log(2)

    def export_config(self) -> dict[str, Any]:
        return {"model": to_dict(self.config), "sampling": to_dict(self.sampling), "fae": self.fae_identity}

    @classmethod
    def from_export(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path) -> "FlowGenerator":
        missing = [k for k in ("model", "sampling") if k not in config]
        if missing:
            raise CheckpointError(f"'{folder}' is a flow generator export without the config section(s) "
                                  f"{', '.join(missing)}")
        gen = cls(from_dict(FlowConfig, config["model"], "model"),
                  sampling=from_dict(FlowSamplerConfig, config["sampling"], "sampling"),
                  fae_identity=config.get("fae"))
        gen.load_export_tensors(tensors, folder)
        return gen


GENERATOR_KINDS: dict[str, type[LatentGenerator]] = {cls.export_format: cls for cls in (Generator, FlowGenerator,
                                                                                     TextToImageGenerator)}


def load_generator(folder: str | Path, device: str | torch.device = "cpu") -> LatentGenerator:
    """The exported generator in ``folder`` (or a run folder's ``export/``), of whichever kind its
    ``config.json`` names (diffusion: :class:`Generator`; flow: :class:`FlowGenerator`;
    text-to-image: :class:`TextToImageGenerator`)."""
    folder = resolve_folder(folder)
    found = read_export_config(folder, max_version=max(c.export_version for c in GENERATOR_KINDS.values()))
    cls = GENERATOR_KINDS.get(found["format"])
    if cls is None:
        raise CheckpointError(f"'{folder}' holds a '{found['format']}' export, not a generator one "
                              f"({', '.join(GENERATOR_KINDS)})")
    return cls.from_pretrained(folder, device)
