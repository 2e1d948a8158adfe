"""What a generator kind supplies to the generator stage (``fae.training.stages.generator``).

The stage owns what every kind shares: the latent cache and its statistics, the latent shape read
from upstream, the held-out loss items, the preview grid and the export folder. A kind owns what
differs: the config sections it reads, how its network is built, the condition and loss it trains
on, what a sample costs, and the exported class that wraps the trained network. The stage looks
its kind up once (``KINDS[config.kind]``) and never asks which kind it holds.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fae.data.latent_cache import LatentCache, LatentDataset
from fae.generation.generator import LatentGenerator


class GeneratorKind(ABC):
    """One kind of generator trained on a latent cache.

    Class attributes:
        section: the config section of the architecture ("model", "flow", "mmdit").
        sampling_section: the config section of the sampler settings.
        sections: every kind-specific config section this kind reads; the config refuses the
            others when they are set (they would be silently ignored).
        unused_hint: the hint that refusal ends with.

    Args:
        config: the stage's ``GeneratorRunConfig``, its latent shape resolved.
    """

    section: str
    sampling_section: str = "sampling"
    sections: tuple[str, ...]
    unused_hint: str

    def __init__(self, config: Any):
        self.config = config

    @classmethod
    def complete(cls, architecture: Any, config: Any) -> Any:
        """The architecture section with what this kind reads from other sections filled in
        (needs no weights). Default: as given."""
        return architecture

    @property
    def architecture(self) -> Any:
        """The config of the network (the ``section`` section)."""
        return getattr(self.config, self.section)

    @property
    def sampling(self) -> Any:
        """The sampler settings of previews and the export (the ``sampling_section`` section)."""
        return getattr(self.config, self.sampling_section)

    @abstractmethod
    def build(self, device: torch.device | str) -> nn.Module:
        """The network to train, on ``device`` ("meta" for a dry run)."""

    def setup(self, cache: LatentCache, device: torch.device) -> None:
        """Check that ``cache`` holds what this kind trains on; load frozen helpers. Default: nothing."""

    def dataset(self, cache: LatentCache, stats: tuple[torch.Tensor, torch.Tensor]) -> Dataset:
        """Training items: normalised latents and labels (with flipped copies when ``data.flip``)."""
        return LatentDataset(cache, *stats, flip=self.config.data.flip)

    def synthetic_conditions(self, size: int, device: torch.device | str) -> list:
        """The parts of a synthetic batch after its latents (``fae plan``): labels [B]."""
        return [torch.zeros(size, dtype=torch.long, device=device)]

    def eval_conditions(self, items: list[tuple], device: torch.device) -> Any:
        """The second part of a batch of dataset items, as :meth:`loss` receives it: labels [n]."""
        return torch.tensor([item[1] for item in items]).to(device)

    def condition(self, labels: Any) -> Any:
        """The network's condition from a batch's second part: the labels of a class-conditional
        network, None for an unconditional one."""
        return labels if self.architecture.num_classes > 0 else None

    @abstractmethod
    def loss(self, network: nn.Module, latents: torch.Tensor, labels: Any,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss of normalised ``latents`` [b, c, h, w] (noise from ``generator``, or
        the global RNG when None)."""

    def loss_figures(self, loss: torch.Tensor | float) -> dict[str, torch.Tensor | float]:
        """Figures logged beside a loss value (training and evaluation). Default: none."""
        return {}

    @abstractmethod
    def sampling_passes(self) -> float:
        """Network forward passes per sample at the configured sampler, in units of one item."""

    def grid_prompts(self, cache: LatentCache, n: int) -> list[str] | None:
        """Prompts of the ``n`` preview samples; None samples by class (cycled). Default: None."""
        return None

    @abstractmethod
    def wrap(self, network: nn.Module, stats: tuple[torch.Tensor, torch.Tensor],
             fae_identity: dict) -> LatentGenerator:
        """``network`` as the exported generator class of this kind, with the latent statistics
        ``stats`` and the identity of the FAE that wrote the cache."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """Lines for ``--dry-run`` and the run log (the stage adds the data line)."""
