"""Per-dimension normalisation of backbone tokens, measured on the training data.

The FAE never sees raw backbone features: every token channel ``d`` is standardised with the
training set's mean and standard deviation, ``x_n = (x - mean_d) / std_d``, before the encoder,
and ``decode_features`` applies the exact inverse, so its output is in the backbone's raw scale.
Why this choice (the paper does not say how it scales the targets): it is invertible, it puts
every channel on the same footing in the L2 loss (DINOv2 / EfficientNet channels differ in scale
by orders of magnitude), and it is a pair of vectors stored inside the exported FAE.

The statistics are measured with :class:`fae.stats.ChannelStats` (float64 sums over all tokens of
all images, merged across ranks).
"""
from __future__ import annotations

import torch
from torch import nn

from fae.errors import ConfigError


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
