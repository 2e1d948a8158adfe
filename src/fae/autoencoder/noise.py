"""The paper's "Gaussian embedding decoder" (stage Ib): Gaussian noise on the pixel decoder's input.

The pixel decoder of stage Ib is trained on the frozen backbone's tokens plus Gaussian noise, "σ =
0.4 for DINOv2, scaled to the norm of the pretrained embeddings", so that it tolerates the
imperfect x_hat the FAE feeds it later (stage II). Stage II itself fine-tunes on the FAE's x_hat
with no noise (the paper mentions none there), so sigma defaults by stage: :data:`STAGE_SIGMA`.

Norm scale. We define the norm scale of the embeddings as the RMS of their entries,
``s = sqrt(mean_{n,t,d} x_{n,t,d}^2)``, measured over training tokens (:func:`token_rms`). Noise
``eps ~ N(0, (sigma * s)^2)`` per entry then has ``E||eps||^2 = sigma^2 * E||x||^2`` for a token
x: the noise norm is sigma times the RMS token norm, whatever the backbone's feature scale.

Latent noise (our option for STARFlow's ``finetuned_vae``, :class:`LatentNoiseConfig`): noise on
the FAE latent z before the frozen feature decoder, so a stage-II decoder learns to paint the
noisy latents a normalizing flow samples (it trains on noise-augmented latents and its samples
keep that noise when no score step removes it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from fae.errors import ConfigError


STAGE_SIGMA = {"noisy-features": 0.4, "finetune": 0.0}  # the default sigma of each pixel-decoder stage


@dataclass
class NoiseConfig:
    """Gaussian noise on the pixel decoder's input tokens (stage Ib; sigma 0 = none).

    Args:
        sigma: noise std relative to the token norm scale; null = the stage's default
            (:data:`STAGE_SIGMA`: 0.4 in stage Ib, the paper's value for DINOv2; 0 in stage II).
        mode: "fixed" = every sample gets sigma; "uniform" = per-sample sigma ~ U[0, sigma]
            (our option, the RAE-style variant).
        scale: the token RMS s; null = measured from the training data at start-up.
        scale_images: how many training images the measurement uses (the first ones).
    """

    sigma: float | None = None
    mode: Literal["fixed", "uniform"] = "fixed"
    scale: float | None = None
    scale_images: int = 512

    def validate(self) -> None:
        if self.sigma is not None and self.sigma < 0:
            raise ConfigError(f"config key 'noise.sigma' must be >= 0, got {self.sigma}")
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"config key 'noise.scale' must be > 0 or null, got {self.scale}")
        if self.scale_images < 1:
            raise ConfigError(f"config key 'noise.scale_images' must be >= 1, got {self.scale_images}")

    def resolved(self, stage: str) -> "NoiseConfig":
        """This config with a null sigma replaced by ``stage``'s default (explicit values kept)."""
        if self.sigma is not None:
            return self
        return replace(self, sigma=STAGE_SIGMA[stage])


def token_rms(tokens: torch.Tensor) -> float:
    """The norm scale s = sqrt(mean x^2) over every entry of tokens [..., D] (float64 sums)."""
    if tokens.numel() == 0:
        raise ConfigError("cannot measure the token scale: no training tokens (is the dataset empty?)")
    return tokens.double().square().mean().sqrt().item()


def add_token_noise(tokens: torch.Tensor, sigma: float, scale: float, mode: str = "fixed") -> torch.Tensor:
    """tokens [B, N, D] + N(0, (sigma_b * scale)^2) per entry; sigma_b = sigma, or ~U[0, sigma] per sample.

    Noise comes from the global torch RNG (the training loop seeds it per step: exact resume).
    """
    if sigma == 0:
        return tokens
    std = torch.full((tokens.shape[0], 1, 1), sigma, device=tokens.device, dtype=tokens.dtype)  # [B, 1, 1]
    if mode == "uniform":
        std = std * torch.rand_like(std)
    return tokens + torch.randn_like(tokens) * std * scale


@dataclass
class LatentNoiseConfig:
    """Gaussian noise on the FAE latents before the frozen feature decoder (stage II; off by default).

    Scale: ``std`` is in units of the FAE's per-channel latent std (its ``latent_std`` buffer, the
    statistics the latent cache records and the generators normalise with). A flow with
    ``flow.noise_std = s`` trains on (z - mean) / latent_std + s * eps and returns samples
    denormalised as x * latent_std + mean = z + s * latent_std * eps; ``std: s`` here shows the
    decoder exactly that distribution, z + s * latent_std_c * eps per channel c.

    Args:
        std: the noise std relative to ``latent_std``; null or 0 = none (the decoder sees x_hat).
    """

    std: float | None = None

    def validate(self) -> None:
        if self.std is not None and self.std < 0:
            raise ConfigError(f"config key 'latent_noise.std' must be >= 0 or null, got {self.std}")

    @property
    def enabled(self) -> bool:
        """True when latents get noise (std > 0)."""
        return bool(self.std)


def add_latent_noise(z: torch.Tensor, std: float, latent_std: torch.Tensor) -> torch.Tensor:
    """z [B, c, h, w] + N(0, (std * latent_std_c)^2) per entry of channel c (latent_std [c]).

    Noise comes from the global torch RNG (the training loop seeds it per step: exact resume).
    """
    if std == 0:
        return z
    scale = std * latent_std.to(device=z.device, dtype=z.dtype).view(1, -1, 1, 1)  # [1, c, 1, 1]
    return z + torch.randn_like(z) * scale
