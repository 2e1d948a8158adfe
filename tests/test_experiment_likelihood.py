"""Bits per dimension of held-out latents (fae.experiment.likelihood), checked on a flow whose every
block is still the identity (STARFlow's zero-initialised output layers): its density is N(0, I) in
the normalised scale, so the figure has a closed form."""
from __future__ import annotations

import math

import pytest
import torch

from fae.experiment.likelihood import HeldOutLatents, bits_per_dim, gaussian_bits, held_out_latents
from fae.generation import FlowConfig, FlowGenerator


def identity_flow(mean: float, std: float, noise_std: float) -> FlowGenerator:
    config = FlowConfig(deep_layers=1, shallow_blocks=1, shallow_layers=1, dim=16, head_dim=8, patch_size=1,
                        latent_channels=2, latent_size=4, num_classes=3, noise_std=noise_std)
    return FlowGenerator(config, torch.full((2,), mean), torch.full((2,), std)).eval()


def test_bits_per_dim_of_an_identity_flow_has_the_closed_form():
    sigma, mean, std = 0.3, 1.5, 3.0
    generator = identity_flow(mean, std, sigma)
    latents = mean + std * torch.randn(4000, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    held = HeldOutLatents(latents, torch.randint(0, 3, (4000,)))
    got = bits_per_dim(generator, held, seed=1, batch_size=500)
    # normalised latents ~ N(0, 1), plus noise sigma in the normalised scale: N(0, 1 + sigma^2),
    # scored by N(0, 1): 0.5 * log(2 pi) + 0.5 * (1 + sigma^2) nats per dimension.
    expected = (0.5 * math.log(2 * math.pi) + 0.5 * (1 + sigma ** 2)) / math.log(2)
    assert got == pytest.approx(expected, abs=0.01)
    assert gaussian_bits(sigma) == pytest.approx(expected, abs=0.01)  # the best Gaussian is no better here
    assert gaussian_bits(sigma) < expected  # ... but never worse: the entropy bounds the cross-entropy
    wrong_scale = bits_per_dim(identity_flow(mean, 1.0, sigma), held, seed=1, batch_size=500)
    assert wrong_scale > expected + 1.0  # the statistics matter: unnormalised latents score far worse


def test_bits_per_dim_is_fixed_by_the_seed():
    generator = identity_flow(0.0, 1.0, 0.3)
    held = HeldOutLatents(torch.randn(50, 2, 4, 4), torch.arange(50) % 3)
    a = bits_per_dim(generator, held, seed=0, batch_size=50)
    assert bits_per_dim(generator, held, seed=0, batch_size=50) == a
    assert bits_per_dim(generator, held, seed=2, batch_size=50) != a


def test_held_out_latents_encode_every_image_in_order():
    class Halve:
        def encode(self, images):
            return images.float()[:, :2, :4, :4] / 2

    images = torch.randint(0, 255, (7, 3, 4, 4), dtype=torch.uint8)
    held = held_out_latents(Halve(), images, torch.arange(7), batch_size=3)
    assert torch.equal(held.latents, images.float()[:, :2] / 2) and held.labels.tolist() == list(range(7))
