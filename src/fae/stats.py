"""Streaming per-channel statistics (mean / std over everything but the channel axis).

One implementation serves every place FAE standardises channels: the backbone feature
normalisation of the FAE (``[..., D]`` tokens), the latent statistics an FAE export carries for
the generator (``[..., c]``), and the held-out latent figures of stage Ia. Sums are float64, so
streaming a large set in batches gives the same answer as one pass, and :meth:`all_reduce`
merges the ranks' sums so every rank ends with the statistics of the whole (sharded) set.
"""
from __future__ import annotations

import torch

from fae import distributed as dist
from fae.errors import ConfigError


class ChannelStats:
    """Running per-channel count, sum and sum of squares; channels on the last axis.

    Args:
        dim: number of channels.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.total_sq = torch.zeros(dim, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """Add a batch [..., dim]."""
        if x.shape[-1] != self.dim:
            raise ConfigError(f"channel statistics expect width {self.dim}, got {x.shape[-1]}")
        flat = x.detach().reshape(-1, self.dim).to("cpu", torch.float64)  # [M, dim]
        self.count += flat.shape[0]
        self.total += flat.sum(0)
        self.total_sq += flat.square().sum(0)

    def all_reduce(self) -> "ChannelStats":
        """Sum every rank's accumulators into this one (no-op in a single process); returns self."""
        count, self.total, self.total_sq = dist.all_reduce_sums(
            torch.tensor([float(self.count)], dtype=torch.float64), self.total, self.total_sq)
        self.count = int(round(float(count[0])))
        return self

    def mean_std(self, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [dim], population std [dim]) in float32; std floored at ``eps`` (dead channels
        stay finite)."""
        if self.count == 0:
            raise ConfigError("channel statistics: nothing was accumulated (is the dataset empty?)")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean.square()).clamp_min(0.0)
        return mean.float(), var.sqrt().clamp_min(eps).float()
