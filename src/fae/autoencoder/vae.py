"""The VAE head: a diagonal Gaussian posterior q(z|x) = N(mu, sigma^2) over the latent.

The encoder emits 2c channels per token: the first c are mu, the last c are log sigma^2.
Training draws z = mu + sigma * eps (the reparameterisation trick); ``encode(..., sample=False)``
returns mu. The KL term is KL(q(z|x) || N(0, I)) (paper, stage Ia loss: ||x_hat - x||^2 + beta KL).
"""
from __future__ import annotations

import torch

# log sigma^2 is clamped to this range before use: exp() of an unclamped value overflows early in
# training on large learning rates, and sigma below e^-15 is numerically zero anyway.
LOGVAR_RANGE = (-30.0, 20.0)


class DiagonalGaussian:
    """Posterior from encoder moments [..., 2c] (mu | log sigma^2 on the last dim).

    Args:
        moments: encoder output, last dim 2c.
    """

    def __init__(self, moments: torch.Tensor):
        mean, logvar = moments.float().chunk(2, dim=-1)  # 2 x [..., c]
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_RANGE)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                          dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, 1)) per latent element, same shape as ``mean``."""
        return gaussian_kl(self.mean, self.logvar)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean, exp(logvar)) || N(0, 1)) = (mu^2 + sigma^2 - 1 - log sigma^2) / 2."""
    logvar = logvar.float().clamp(*LOGVAR_RANGE)
    return 0.5 * (mean.float().square() + logvar.exp() - 1.0 - logvar)
