"""Loss parts of the pixel decoder: hinge GAN, adaptive weight, patch discriminator, LPIPS."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fae.autoencoder.discriminator import DiscriminatorConfig, PatchDiscriminator
from fae.autoencoder.losses import adaptive_weight, hinge_d_loss, hinge_g_loss, reconstruction_loss
from fae.autoencoder.perceptual import LPIPS, LPIPS_CHANNELS, vgg16_features
from fae.errors import ConfigError, WeightsNotFoundError


def test_hinge_losses():
    ones = torch.ones(2, 1, 5, 5)
    assert hinge_d_loss(ones, -ones).item() == 0.0  # confident and right: no loss
    assert hinge_d_loss(-ones, ones).item() == pytest.approx(2.0)  # 0.5 * (2 + 2)
    assert hinge_d_loss(0 * ones, 0 * ones).item() == pytest.approx(1.0)
    assert hinge_g_loss(3 * ones).item() == -3.0


def test_reconstruction_loss_weights():
    fake, real = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    loss, logs = reconstruction_loss(fake, real, l1_weight=2.0, l2_weight=4.0)
    assert logs["l1"].item() == 0.5 and logs["l2"].item() == 0.25
    assert loss.item() == pytest.approx(2.0 * 0.5 + 4.0 * 0.25)


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    x = torch.randn(16, 8)
    out = layer(x)
    rec = out.square().mean()
    gan = 3.0 * rec  # its gradient is 3x the reconstruction's -> weight 1/3
    w = adaptive_weight(rec, gan, layer.weight, eps=0.0)
    assert w.item() == pytest.approx(1 / 3, rel=1e-5)
    assert not w.requires_grad
    huge = adaptive_weight(rec, 1e-9 * rec, layer.weight, max_weight=10.0)
    assert huge.item() == 10.0  # clamped


def test_patch_discriminator_gives_a_logit_map_for_28px_images():
    disc = PatchDiscriminator(DiscriminatorConfig(channels=8, layers=2, groups=4), in_channels=1)
    assert disc(torch.rand(3, 1, 28, 28) * 2 - 1).shape == (3, 1, 5, 5)
    with pytest.raises(ConfigError, match="discriminator.groups"):
        DiscriminatorConfig(channels=8, groups=3).validate()


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random weights in the two public file formats (torchvision VGG16 / lpips v0.1 heads)."""
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    vgg = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # ignored, as in the real file
    torch.save(vgg, folder / "vgg16.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}
    torch.save(heads, folder / "vgg.pth")
    return folder / "vgg16.pth", folder / "vgg.pth"


def test_lpips_loads_user_files_and_measures_distance(lpips_files):
    vgg_path, heads_path = lpips_files
    lpips = LPIPS(str(vgg_path), str(heads_path))
    assert torch.equal(lpips.heads[2].weight, torch.load(heads_path)["lin2.model.1.weight"])
    a = torch.rand(2, 3, 16, 16) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    assert torch.allclose(lpips(a, a), torch.zeros(2), atol=1e-6)
    d = lpips(a, b)
    assert d.shape == (2,) and torch.all(d > 0)
    assert torch.allclose(d, lpips(b, a), rtol=1e-4)
    assert lpips(a[:, :1], b[:, :1]).shape == (2,)  # grayscale is repeated to RGB
    assert not any(p.requires_grad for p in lpips.parameters())


def test_lpips_without_files_is_a_clear_error(tmp_path, lpips_files):
    with pytest.raises(WeightsNotFoundError, match="loss.lpips_vgg_path"):
        LPIPS(None, None)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        LPIPS(str(tmp_path / "nope.pth"), str(lpips_files[1]))
    from fae.config import load_config
    from fae.training.stages.pixel_decoder import CONFIG_CLASS

    with pytest.raises(ConfigError, match="lpips_vgg_path"):
        load_config(CONFIG_CLASS, None, ["loss.perceptual=lpips"])


def test_efficientnet_distance_is_zero_on_equal_images_grows_with_damage_and_has_gradients():
    from fae.autoencoder.perceptual import build_perceptual
    from fae.data.fashion_mnist import FashionMNIST
    from fae.images import to_unit_range

    torch.manual_seed(0)
    distance = build_perceptual("efficientnet", resolution=32)
    real = to_unit_range(FashionMNIST("test", limit=6).images)  # [6, 1, 28, 28] in [-1, 1]
    blurred = nn.functional.avg_pool2d(real, 3, stride=1, padding=1)
    noisy = real + 0.5 * torch.randn_like(real)
    assert torch.allclose(distance(real, real), torch.zeros(6), atol=1e-6)
    assert (distance(blurred, real) > 0).all()
    assert (distance(noisy, real) > distance(blurred, real)).all()  # more damage, larger distance
    fake = blurred.clone().requires_grad_()
    distance(fake, real).sum().backward()
    assert fake.grad.abs().sum() > 0 and all(p.grad is None for p in distance.parameters())
    assert not distance.train().training  # BatchNorm statistics stay frozen
    with pytest.raises(ConfigError, match="perceptual_resolution"):
        from fae.autoencoder.losses import PixelLossConfig
        PixelLossConfig(perceptual="efficientnet", perceptual_resolution=8).validate()
