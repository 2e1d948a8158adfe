"""Per-dimension normalisation of backbone tokens, measured on the training data.

The FAE never sees raw backbone features: every token channel ``d`` is standardised with the
training set's mean and standard deviation, ``x_n = (x - mean_d) / std_d``, before the encoder,
and ``decode_features`` applies the exact inverse, so its output is in the backbone's raw scale.
Why this choice (the paper does not say how it scales the targets): it is invertible, it puts
every channel on the same footing in the L2 loss (DINOv2 / EfficientNet channels differ in scale
by orders of magnitude), and it is a pair of vectors stored inside the exported FAE.

Statistics are accumulated in float64 (sum and sum of squares over all tokens of all images), so
streaming them over a large dataset in batches gives the same answer as one pass.
"""
from __future__ import annotations

import torch
from torch import nn

from fae.errors import ConfigError


class FeatureStats:
    """Streaming per-channel mean / std of tokens [..., D] in float64.

    Args:
        dim: the token width D.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.total_sq = torch.zeros(dim, dtype=torch.float64)

    def update(self, tokens: torch.Tensor) -> None:
        """Add a batch of tokens [..., D]."""
        if tokens.shape[-1] != self.dim:
            raise ConfigError(f"feature statistics expect tokens of width {self.dim}, got {tokens.shape[-1]}")
        flat = tokens.detach().reshape(-1, self.dim).to("cpu", torch.float64)  # [M, D]
        self.count += flat.shape[0]
        self.total += flat.sum(0)
        self.total_sq += flat.square().sum(0)

    def mean_std(self, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [D], std [D]) in float32; std is floored at ``eps`` (dead channels stay finite)."""
        if self.count == 0:
            raise ConfigError("feature statistics: no tokens were seen (is the dataset empty?)")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean.square()).clamp_min(0.0)
        return mean.float(), var.sqrt().clamp_min(eps).float()


class FeatureNormalizer(nn.Module):
    """Invertible per-channel standardisation [B, N, D] <-> [B, N, D].

    Args:
        dim: token width D.
        enabled: False makes both directions the identity (``feature_norm: none``).

    The buffers start as mean 0 / std 1 (identity) and are set with :meth:`set_stats`; they are
    part of the state dict, so they travel with checkpoints and exports.
    """

    def __init__(self, dim: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ConfigError(f"feature statistics of shape {tuple(mean.shape)} do not fit tokens of "
                              f"width {self.mean.shape[0]}")
        if not bool((std > 0).all()):
            raise ConfigError("feature statistics: every std must be > 0")
        self.mean.copy_(mean)
        self.std.copy_(std)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return (x - self.mean) / self.std  # [B, N, D]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return x * self.std + self.mean  # [B, N, D]
