"""PSNR and SSIM on float images in [0, 1] (per image, then averaged over the batch).

SSIM follows Wang et al. 2004: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
population (not sample) covariances, computed per channel over the "valid" window positions (no
padding) and averaged over channels and positions. This equals
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``, which filters the whole image and then crops the
border the window does not cover.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    """[C, H, W] or [B, C, H, W] float -> [B, C, H, W] float64."""
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    return x.double()


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_batch(torch.as_tensor(a)), _as_batch(torch.as_tensor(b))
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def psnr_per_image(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image pair [B]: ``10 log10(range^2 / MSE)``; identical images give +inf."""
    a, b = _check_pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)  # [B]
    return 10.0 * torch.log10(data_range ** 2 / mse)  # mse = 0 -> +inf


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean PSNR (dB) over the batch (inf only when every pair is identical)."""
    return float(psnr_per_image(a, b, data_range).mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian [size] (float64)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid positions only: [B, C, H, W] -> [B, C, H-10, W-10]."""
    channels = x.shape[1]
    kh = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    kw = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    return F.conv2d(F.conv2d(x, kh, groups=channels), kw, groups=channels)


def ssim_per_image(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image pair [B] (mean over channels and valid window positions)."""
    a, b = _check_pair(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got "
                         f"{tuple(a.shape[-2:])}")
    window = gaussian_window().to(a.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _blur(a, window), _blur(b, window)
    var_a = _blur(a * a, window) - mu_a ** 2
    var_b = _blur(b * b, window) - mu_b ** 2
    cov = _blur(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1)  # [B]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM over the batch (1.0 for identical images)."""
    return float(ssim_per_image(a, b, data_range).mean())

