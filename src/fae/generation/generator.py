"""``Generator``: a trained latent diffusion generator ready to sample, and its on-disk export;
``LatentGenerator``: what it shares with the flow generator (``fae.generation.flow_generator``).

Export folder (Hugging Face convention): ``config.json`` (architecture, transport, default sampler,
the identity of the FAE whose latents it models) + ``model.safetensors`` (EMA network weights and
the latent cache's per-channel ``latent_mean`` / ``latent_std``). The network works on normalised
latents (z - mean) / std; :meth:`Generator.sample` returns latents in the FAE's own scale, ready
for ``FAE.decode``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from fae.config import from_dict, to_dict
from fae.errors import CheckpointError
from fae.export import Exportable, load_strict
from fae.generation.config import GeneratorConfig
from fae.generation.model import DiffusionTransformer
from fae.generation.samplers import GuidedVelocity, SamplerConfig, integrate
from fae.generation.seeding import randn_per_sample, sample_generators
from fae.generation.transport import TransportConfig


class LatentGenerator(Exportable, nn.Module):
    """What every exported generator shares: its network ``model`` (with ``config.latent_shape``,
    ``config.num_classes`` and a ``conditioner``), the latent statistics, default sampler settings,
    the FAE identity, and per-sample seeded batching. Subclasses draw one batch in
    ``_sample_batch`` and define the export.

    Args:
        network: the generator network.
        latent_mean, latent_std: per-channel statistics [c] used to normalise the training latents.
        sampling: default sampler settings (overridable per call).
        fae_identity: the manifest entry of the FAE whose latents this models (checked by ``fae sample``).
    """

    def __init__(self, network: nn.Module, latent_mean: torch.Tensor | None, latent_std: torch.Tensor | None,
                 sampling: Any, fae_identity: dict[str, Any] | None):
        super().__init__()
        self.model = network
        self.sampling = sampling
        self.fae_identity = dict(fae_identity or {})
        c = self.model.config.latent_channels
        device = next(self.model.parameters()).device
        mean = torch.zeros(c) if latent_mean is None else latent_mean.float().reshape(c)
        std = torch.ones(c) if latent_std is None else latent_std.float().reshape(c)
        mean, std = mean.to(device), std.to(device)
        self.register_buffer("latent_mean", mean)
        self.register_buffer("latent_std", std)

    @property
    def config(self):
        return self.model.config

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """FAE latents [B, c, h, w] -> the network's scale."""
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The network's scale -> FAE latents (the inverse of :meth:`normalize`)."""
        return z * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)

    @torch.no_grad()
    def sample(self, indices: list[int] | range, labels: torch.Tensor | None = None, seed: int = 0,
               config=None, batch_size: int = 64) -> torch.Tensor:
        """Latents [len(indices), c, h, w] in the FAE's scale; sample i is a function of
        (seed, indices[i], labels[i]) only, whatever the batch size. ``config``: sampler settings
        of this generator's kind (default: the stored ones)."""
        return torch.cat(list(self.iter_samples(indices, labels, seed, config, batch_size)))

    @torch.no_grad()
    def iter_samples(self, indices: list[int] | range, labels: torch.Tensor | None = None, seed: int = 0,
                     config=None, batch_size: int = 64) -> Iterator[torch.Tensor]:
        """Yield batches of latents (see :meth:`sample`), so callers can decode as they go."""
        config = config or self.sampling
        indices = list(indices)
        if labels is not None:
            self.model.conditioner.check(labels)
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            cond = None if labels is None else labels[start:start + len(batch)]
            yield self._sample_batch(batch, cond, seed, config)

    def _sample_batch(self, indices: list[int], cond: torch.Tensor | None, seed: int, config) -> torch.Tensor:
        """Latents [len(indices), c, h, w] in the FAE's scale, on the CPU."""
        raise NotImplementedError

    def export_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(latent_mean=self.latent_mean, latent_std=self.latent_std)
        return tensors

    def load_export_tensors(self, tensors: dict[str, torch.Tensor], folder: Path) -> None:
        """The counterpart of :meth:`export_tensors` (strict: every tensor must match)."""
        for key in ("latent_mean", "latent_std"):
            if key not in tensors:
                raise CheckpointError(f"weights in '{folder}' lack '{key}'")
        load_strict(self.model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, folder)
        self.latent_mean.copy_(tensors["latent_mean"])
        self.latent_std.copy_(tensors["latent_std"])


class Generator(LatentGenerator):
    """Diffusion transformer + transport + latent statistics.

    Args:
        model_config: architecture of the diffusion transformer.
        transport: the transport it was trained with (its shift is the sampler's default).
        latent_mean, latent_std: per-channel statistics [c] used to normalise the training latents.
        sampling: default sampler settings (overridable per call).
        fae_identity: the manifest entry of the FAE whose latents this models (checked by ``fae sample``).
        network: an existing network to wrap (e.g. the EMA model during training) instead of a
            freshly initialised one; ``model_config`` is then ignored.
    """

    export_format = "fae-generator"
    export_label = "generator"  # in the error naming an export's missing sections
    model_config_class = GeneratorConfig  # what the export's "model" section holds
    extra_sections: tuple[str, ...] = ()  # sections a subclass adds, passed to __init__ by name

    def __init__(self, model_config: GeneratorConfig, transport: TransportConfig | None = None,
                 latent_mean: torch.Tensor | None = None, latent_std: torch.Tensor | None = None,
                 sampling: SamplerConfig | None = None, fae_identity: dict[str, Any] | None = None,
                 network: DiffusionTransformer | None = None):
        super().__init__(network if network is not None else DiffusionTransformer(model_config),
                         latent_mean, latent_std, sampling or SamplerConfig(), fae_identity)
        self.transport = transport or TransportConfig()

    def _sample_batch(self, indices: list[int], cond: torch.Tensor | None, seed: int,
                      config: SamplerConfig) -> torch.Tensor:
        device = self.latent_mean.device
        generators = sample_generators(seed, indices)
        x = randn_per_sample(generators, self.config.latent_shape).to(device)  # [B, c, h, w], t = 1
        if cond is not None:
            cond = cond.to(device)  # labels [B] or a TextCondition
        null = None if cond is None else self.model.conditioner.null_like(cond)
        velocity = GuidedVelocity(self.model, cond, null, config, shift=config.grid_shift(self.transport.shift))
        shape = self.config.latent_shape
        z = integrate(velocity, x, config, shift=self.transport.shift,
                      noise=lambda step: randn_per_sample(generators, shape))
        return self.denormalize(z.float()).cpu()

    # ---- export (fae.export: config.json + model.safetensors) ---------------------------------------

    def export_config(self) -> dict[str, Any]:
        return {"model": to_dict(self.config), "transport": to_dict(self.transport),
                "sampling": to_dict(self.sampling), "fae": self.fae_identity}

    @classmethod
    def from_export(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path) -> "Generator":
        missing = [k for k in ("model", "transport", "sampling", *cls.extra_sections) if k not in config]
        if missing:
            raise CheckpointError(f"'{folder}' is a {cls.export_label} export without the config section(s) "
                                  f"{', '.join(missing)}")
        gen = cls(from_dict(cls.model_config_class, config["model"], "model"),
                  from_dict(TransportConfig, config["transport"], "transport"),
                  sampling=from_dict(SamplerConfig, config["sampling"], "sampling"),
                  fae_identity=config.get("fae"), **{key: config[key] for key in cls.extra_sections})
        gen.load_export_tensors(tensors, folder)
        return gen
