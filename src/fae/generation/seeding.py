"""Per-sample randomness and rank sharding for sampling.

Every sample has its own random stream, a function of (seed, sample index) only, so a sample does
not depend on the batch it is drawn in, on the batch size, or on the number of ranks. Ranks take
contiguous slices of the sample indices (``fae.distributed.shard_range``).
"""
from __future__ import annotations

import numpy as np
import torch

from fae.errors import ConfigError


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample ``index`` of a run seeded with ``seed``."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_generators(seed: int, indices: list[int] | range) -> list[torch.Generator]:
    """One CPU generator per sample index (CPU streams are identical on every machine)."""
    return [torch.Generator().manual_seed(sample_seed(seed, int(i))) for i in indices]


def randn_per_sample(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """[len(generators), *shape] standard normal, row i drawn from generator i."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def balanced_labels(indices: list[int] | range, classes: list[int]) -> torch.Tensor:
    """Label of each sample index: cycling through ``classes``, so N samples hold equal counts
    per class whenever len(classes) divides N (the ADM evaluation convention)."""
    if not classes:
        raise ConfigError("the list of classes to sample is empty")
    return torch.tensor([classes[int(i) % len(classes)] for i in indices], dtype=torch.long)
