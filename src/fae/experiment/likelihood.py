"""Bits per dimension of a flow generator on held-out latents of its own space.

A normalizing flow has an exact likelihood, so besides FID and class accuracy each checkpoint of a
flow arm gets one more number: the bits per dimension of the first ``likelihood_images``
Fashion-MNIST *test* images (never trained on), encoded by the arm's own encoder (the FAE, the
pixel VAE, ...), normalised with the training cache's per-channel statistics and noise-augmented
as in training (x + noise_std * eps, eps fixed by the evaluation seed). Conditioned on the true
class. That is the quantity the flow was trained to minimise, measured on images it has not seen.

Figures are comparable between checkpoints of one arm. Between spaces they are not a verdict: each
space's latents are standardised per channel, so the figure measures structure beyond a diagonal
Gaussian, not the images. :data:`gaussian_bits` is that reference: a flow that learned nothing
beyond the per-channel statistics scores 0.5 * log2(2 pi e (1 + noise_std^2)) (the entropy of
N(0, 1 + noise_std^2) per dimension).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def gaussian_bits(noise_std: float) -> float:
    """Bits per dimension of standardised, noise-augmented latents under N(0, (1 + s^2) I)."""
    return 0.5 * math.log2(2 * math.pi * math.e * (1 + noise_std ** 2))


@dataclass
class HeldOutLatents:
    """Test latents of one space in its own scale [n, c, h, w] with their class labels [n]."""

    latents: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def held_out_latents(encoder, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 100) -> HeldOutLatents:
    """``encoder.encode`` (uint8 images -> latents [b, c, h, w], the posterior mean the latent cache
    stores) over ``images`` [n, C, H, W] in batches."""
    parts = [encoder.encode(images[i:i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)]
    return HeldOutLatents(torch.cat(parts), labels.long())


@torch.no_grad()
def bits_per_dim(generator, held_out: HeldOutLatents, seed: int = 0, batch_size: int = 100) -> float:
    """Mean bits per dimension of ``held_out`` under a :class:`fae.generation.FlowGenerator`,
    noise-augmented in the normalised scale with the flow's own noise_std (fixed noise)."""
    sigma = float(generator.config.noise_std)
    noise = torch.Generator().manual_seed(seed)
    std = generator.latent_std.float().cpu().view(1, -1, 1, 1)
    total, count = 0.0, 0
    for start in range(0, len(held_out.latents), batch_size):
        z = held_out.latents[start:start + batch_size]
        eps = torch.randn(z.shape, generator=noise)
        labels = held_out.labels[start:start + batch_size] if generator.config.num_classes else None
        bits = generator.bits_per_dim(z + sigma * std * eps, labels)  # noise in the normalised scale
        total, count = total + float(bits.sum()), count + len(z)
    return total / count
