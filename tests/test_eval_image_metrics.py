"""PSNR / SSIM against closed forms and scikit-image, plus feature reconstruction metrics."""
import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity

from fae.evaluation.image_metrics import psnr, psnr_per_image, ssim, ssim_per_image
from fae.evaluation.recon import feature_metrics, match_reference


def _astronaut() -> torch.Tensor:
    image = data.astronaut()[::4, ::4]  # 128x128x3 real photo
    return torch.from_numpy(image.copy()).permute(2, 0, 1).double() / 255.0  # [3, 128, 128]


def test_identical_images_give_inf_psnr_and_unit_ssim():
    x = _astronaut()
    assert psnr(x, x) == math.inf
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_psnr_matches_closed_form_for_known_mse():
    a = torch.full((2, 1, 16, 16), 0.5, dtype=torch.float64)
    signs = torch.where(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.5, -1.0, 1.0)
    b = a + 0.1 * signs  # every pixel off by exactly 0.1: MSE = 0.01
    assert psnr_per_image(a, b).tolist() == pytest.approx([20.0, 20.0], abs=1e-6)  # 10 log10(1 / 0.01)
    assert psnr(a * 255, b * 255, data_range=255.0) == pytest.approx(20.0, abs=1e-6)


def test_ssim_matches_skimage_on_a_real_image():
    x = _astronaut()
    rng = np.random.default_rng(0)
    noisy = (x + torch.from_numpy(rng.normal(0, 0.08, size=x.shape))).clamp(0, 1)
    expected = structural_similarity(x.permute(1, 2, 0).numpy(), noisy.permute(1, 2, 0).numpy(), channel_axis=2,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0)
    assert ssim(x, noisy) == pytest.approx(expected, abs=1e-3)
    assert 0.2 < ssim(x, noisy) < 0.95
    blurred = torch.nn.functional.avg_pool2d(x[None], 3, 1, 1)[0]
    assert ssim_per_image(x, blurred).shape == (1,)
    with pytest.raises(ValueError, match="shape"):
        ssim(x, x[:, :64])


def test_feature_metrics_known_values():
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    assert feature_metrics(x, x) == pytest.approx({"feature_cosine": 1.0, "feature_rel_l2": 0.0})
    assert feature_metrics(x, 2 * x) == pytest.approx({"feature_cosine": 1.0, "feature_rel_l2": 1.0})
    assert feature_metrics(x, -x)["feature_cosine"] == pytest.approx(-1.0)


def test_match_reference_expands_gray_and_resizes():
    gray = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    like = torch.zeros(2, 3, 32, 32)
    out = match_reference(gray, like)
    assert out.shape == (2, 3, 32, 32) and torch.allclose(out, torch.ones_like(out))
