"""Image -> model-input preprocessing shared by every backbone adapter.

Input convention (see ``base.py``): ``[B, C, H, W]`` uint8 in [0, 255] or float in [0, 1], any size,
C in {1, 3}. Output: float ``[B, 3, S, S]`` normalised with the model's mean/std, where S is the
backbone's input resolution. Resizing keeps the aspect ratio (short side -> S) and then
center-crops, so a square image is only resized. ``F.interpolate(antialias=True)`` matches PIL's
area-aware downsampling that the pretrained models saw in training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fae.errors import DataError


def to_float_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images [B, C, H, W] (C in {1, 3}) -> float32 RGB in [0, 1]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"backbone input must be images [B, C, H, W] with C in {{1, 3}}, "
                        f"got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float().div_(255.0)
    elif images.is_floating_point():
        x = images.float()
    else:
        raise DataError(f"backbone input must be uint8 or float images, got dtype {images.dtype}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB  [B, 3, H, W]
    return x


def resize_center_crop(x: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize so the short side is ``size`` (antialiased), then center-crop to ``size x size``."""
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(new_h, new_w), mode=mode, antialias=True,
                          align_corners=False if mode in ("bilinear", "bicubic") else None)
        if mode == "bicubic":  # bicubic overshoots; keep the pixel range the model expects
            x = x.clamp_(0.0, 1.0)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[..., top:top + size, left:left + size]
    return x  # [B, 3, size, size]


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std per channel; x [B, 3, H, W] in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def preprocess_images(images: torch.Tensor, resolution: int, mean: tuple[float, ...],
                      std: tuple[float, ...], mode: str = "bicubic",
                      device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """The whole chain: to float RGB -> resize + center crop -> normalise -> (device, dtype)."""
    if device is not None:
        images = images.to(device, non_blocking=True)  # move uint8 first: 4x less to copy
    x = resize_center_crop(to_float_rgb(images), resolution, mode)
    x = normalize(x, mean, std)
    return x.to(dtype) if dtype is not None else x
