"""``fae.integrations.diffusers.AutoencoderFAE`` with the installed diffusers: the VAE interface a
diffusers script uses (encode -> latent_dist, decode -> sample, config scale / shift), its round trip
against the FAE's own encode / decode, a diffusers DiT trained on its latents the way a diffusers
training script does it, DiTPipeline sampling through it, and its diffusers save / load."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiTPipeline, DiTTransformer2DModel

from fae.autoencoder import FAE
from fae.autoencoder.vae import gaussian_kl
from fae.data.datasets import DataConfig, build_dataset
from fae.errors import CheckpointError, ImageRangeError
from fae.integrations.diffusers import AutoencoderFAE, pooled_scale_shift
from tiny import perturbed, tiny_fae_with_pixel_decoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fae() -> FAE:
    """The tiny FAE with noise on every tensor (so the latent statistics are not 0 / 1)."""
    return perturbed(tiny_fae_with_pixel_decoder(), seed=3).eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """16 Fashion-MNIST images as diffusers takes them (float [-1, 1]) and their labels."""
    ds = build_dataset(DataConfig(limit=16))
    return ds.images.float() / 127.5 - 1.0, ds.labels


def test_round_trip_equals_the_faes_own_encode_and_decode(fae, data):
    pixels = data[0][:6]  # [6, 1, 28, 28] in [-1, 1]
    vae = AutoencoderFAE.from_fae(fae)
    dist = vae.encode(pixels).latent_dist
    with torch.no_grad():
        z = fae.encode((pixels + 1) / 2)  # [6, 4, 4, 4], the posterior mean
    torch.testing.assert_close(dist.mode(), z, rtol=0, atol=0)
    torch.testing.assert_close(dist.mean, z, rtol=0, atol=0)
    images = vae.decode(dist.mode()).sample  # [6, 1, 28, 28] in [-1, 1]
    torch.testing.assert_close((images + 1) / 2, fae.decode(z), rtol=0, atol=1e-6)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.05
    # forward = decode(mode(encode(x))), AutoencoderKL's
    torch.testing.assert_close(vae(pixels).sample, images)
    assert not isinstance(vae.decode(z, return_dict=False)[0], type(vae.decode(z)))


def test_latent_dist_is_the_fae_posterior(fae, data):
    pixels = data[0][:4]
    dist = AutoencoderFAE.from_fae(fae).encode(pixels).latent_dist
    mean, logvar = fae.encode_moments((pixels + 1) / 2)  # [4, 4, 4, 4] each
    torch.testing.assert_close(dist.std, torch.exp(0.5 * logvar))
    # diffusers' KL (a sum over latent entries) = the FAE's per-entry KL summed
    torch.testing.assert_close(dist.kl(), gaussian_kl(mean, logvar).sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    # sample(generator) is mean + std * noise from that generator, reproducibly
    a = dist.sample(generator=torch.Generator().manual_seed(5))
    b = dist.sample(generator=torch.Generator().manual_seed(5))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, mean + torch.exp(0.5 * logvar) * noise)


def test_config_carries_the_latent_scale_and_shape(fae):
    vae = AutoencoderFAE.from_fae(fae)
    mean, std = fae.latent_mean, fae.latent_std
    # pooled over channels: shift = overall mean, scale = 1 / overall std
    shift = mean.double().mean().item()
    var = (std.double() ** 2 + (mean.double() - shift) ** 2).mean().item()
    assert vae.config.shift_factor == pytest.approx(shift) and vae.config.shift_factor != 0.0
    assert vae.config.scaling_factor == pytest.approx(var ** -0.5) and vae.config.scaling_factor != 1.0
    assert vae.config.latents_mean == pytest.approx(mean.tolist())
    assert (vae.config.latent_channels, vae.config.sample_size, vae.config.latent_size) == (4, 28, [4, 4])
    # (z - shift) * scale is standardised when z follows the statistics
    z = mean.view(1, -1, 1, 1) + std.view(1, -1, 1, 1) * torch.randn(4096, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    scaled = (z - vae.config.shift_factor) * vae.config.scaling_factor
    assert abs(scaled.mean().item()) < 0.01 and scaled.std().item() == pytest.approx(1.0, abs=0.01)
    # statistics passed in (a latent cache's) replace the FAE's; explicit scalars win
    cache = AutoencoderFAE.from_fae(fae, latents_mean=torch.full((4,), 2.0), latents_std=torch.full((4,), 0.5))
    assert (cache.config.shift_factor, cache.config.scaling_factor) == pytest.approx((2.0, 2.0))
    assert AutoencoderFAE.from_fae(fae, scaling_factor=0.3).config.scaling_factor == 0.3
    # an FAE without measured statistics (mean 0, std 1): 1.0 / 0.0
    assert pooled_scale_shift(torch.zeros(4), torch.ones(4)) == (0.0, 1.0)
    with pytest.raises(CheckpointError, match="one per latent channel"):
        AutoencoderFAE.from_fae(fae, latents_mean=[0.0] * 3, latents_std=[1.0] * 3)


def test_encode_refuses_images_outside_minus_one_one(fae, data):
    vae = AutoencoderFAE.from_fae(fae)
    pixels = data[0][:2]
    with pytest.raises(ImageRangeError, match=r"looks like 0-255: use x / 127.5 - 1"):
        vae.encode((pixels + 1) * 127.5)
    with pytest.raises(ImageRangeError, match="float images in \\[-1, 1\\]"):
        vae.encode(((pixels + 1) * 127.5).round().to(torch.uint8))


def test_a_diffusers_dit_trains_on_fae_latents(fae, data):
    """The loop of diffusers' training scripts: latents from vae.encode(...).latent_dist.sample(),
    shifted and scaled by the VAE config, DDPM noise, epsilon-prediction MSE."""
    pixels, labels = data
    vae = AutoencoderFAE.from_fae(fae)
    vae.requires_grad_(False)
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                num_layers=2, sample_size=4, patch_size=2, num_embeds_ada_norm=10)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample(generator=g)  # [16, 4, 4, 4]
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    # a fixed held-out draw of (noise, t) to measure the loss on, before and after
    probe_noise = torch.randn(latents.shape, generator=g)
    probe_t = torch.randint(0, 1000, (len(latents),), generator=g)

    def loss_on(noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noisy = scheduler.add_noise(latents, noise, t)
        return torch.nn.functional.mse_loss(dit(noisy, timestep=t, class_labels=labels).sample, noise)

    with torch.no_grad():
        before = loss_on(probe_noise, probe_t).item()
    for _ in range(60):
        loss = loss_on(torch.randn(latents.shape, generator=g), torch.randint(0, 1000, (len(latents),), generator=g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_on(probe_noise, probe_t).item()
    assert after < 0.7 * before, (before, after)

    # ... and the trained DiT samples through diffusers' DiTPipeline with the FAE as its VAE
    dit.eval()
    pipe = DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[0, 3], num_inference_steps=4, guidance_scale=1.0,
               generator=torch.Generator().manual_seed(1), output_type="np").images
    again = pipe(class_labels=[0, 3], num_inference_steps=4, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(1), output_type="np").images
    assert out.shape == (2, 28, 28, 1) and 0 <= out.min() and out.max() <= 1 and out.std() > 0.01
    assert (out == again).all()


def test_save_pretrained_and_from_pretrained(fae, tmp_path, tiny_fae_export):
    vae = AutoencoderFAE.from_fae(fae, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")  # diffusers' writer: config.json + diffusion_pytorch_model.safetensors
    loaded = AutoencoderFAE.from_pretrained(tmp_path / "vae")
    assert loaded.config.scaling_factor == 0.5 and loaded.config.shift_factor == vae.config.shift_factor
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.decode(z).sample, vae.decode(z).sample, rtol=0, atol=0)
    assert loaded.fae.identity() == fae.identity()
    # an FAE export opens directly
    from_export = AutoencoderFAE.from_pretrained(tiny_fae_export)
    reference = FAE.from_pretrained(tiny_fae_export)
    torch.testing.assert_close(from_export.decode(z).sample, reference.decode(z) * 2 - 1, rtol=0, atol=0)
    assert (from_export.config.scaling_factor, from_export.config.shift_factor) == (1.0, 0.0)  # stats 0 / 1


def test_without_diffusers_the_import_names_the_extra():
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "try:\n    import fae.integrations.diffusers\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("MissingExtraError") and "pip install" in out and "[bench]" in out
