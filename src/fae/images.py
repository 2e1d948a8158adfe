"""Image tensors: the one place that converts between value ranges, and draws image grids.

Conventions used everywhere in FAE (stated once, here):

* stored / saved images are ``uint8`` in [0, 255], ``[N, C, H, W]`` (ADM ``.npz`` files: NHWC);
* model outputs for users are ``float`` in [0, 1] (``FAE.decode``);
* the pixel decoder works in [-1, 1] (``to_unit_range`` / ``from_unit_range``).

:func:`quantize` is the rule every image metric applies to a float image before it is scored:
``round(clamp(x, 0, 1) * 255)`` - what a PNG of the image holds. PSNR, SSIM, rFID, FID and the
class-accuracy checks all see these uint8 values, never the float ones.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fae.errors import ImageRangeError
from fae.io import atomic_write


def quantize(images01: torch.Tensor) -> torch.Tensor:
    """float [..] in [0, 1] -> uint8 (round to nearest; out-of-range values are clamped)."""
    if images01.dtype == torch.uint8:
        return images01
    return (images01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float [-1, 1] (the pixel decoder's range)."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float() * 2.0 - 1.0


def from_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Pixel-decoder output in [-1, 1] -> float [0, 1] (what ``FAE.decode`` returns)."""
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """[N, 1|3, H, W] -> [N, 3, H, W] (grayscale repeated; a view, no copy)."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8, or float in [0, 1], [N, C, H, W] -> uint8 [N, 3, H, W] on the CPU."""
    return to_rgb(quantize(images)).cpu()


def nchw_to_nhwc(images: torch.Tensor) -> np.ndarray:
    """uint8 [N, C, H, W] tensor -> uint8 [N, H, W, C] array (the ADM ``.npz`` layout)."""
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def nhwc_to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] array -> uint8 [N, C, H, W] tensor (a copy the caller owns)."""
    return torch.from_numpy(np.array(images, order="C", copy=True)).permute(0, 3, 1, 2)


def image_grid(images: torch.Tensor, ncol: int, scale: int = 1, pad: int = 2,
               row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
               label_width: int = 110) -> Image.Image:
    """Tile N images (uint8, or float in [0, 1]) row-major into a grid with optional captions."""
    images = to_uint8_rgb(images)
    n, _, h, w = images.shape
    nrow = (n + ncol - 1) // ncol
    h, w = h * scale, w * scale
    left = label_width if row_labels else 0
    top = 16 if col_labels else 0
    canvas = Image.new("RGB", (left + ncol * (w + pad) + pad, top + nrow * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in range(n):
        r, c = divmod(i, ncol)
        tile = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        if scale != 1:
            tile = tile.resize((w, h), Image.NEAREST)
        canvas.paste(tile, (left + pad + c * (w + pad), top + pad + r * (h + pad)))
    for r, text in enumerate(row_labels or []):
        draw.text((4, top + pad + r * (h + pad) + h // 2 - 6), str(text), fill="black", font=font)
    for c, text in enumerate(col_labels or []):
        draw.text((left + pad + c * (w + pad) + 2, 2), str(text), fill="black", font=font)
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PIL image as PNG atomically; returns the path."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


# How far float images may stray outside their range before it counts as the wrong convention
# (resampling overshoot stays well inside it; a [-1, 1] or 0-255 image is far beyond it).
RANGE_TOLERANCE = 0.02


def check_float_range(images: torch.Tensor, low: float, high: float, what: str) -> None:
    """Refuse float ``images`` with values outside [low, high] (beyond :data:`RANGE_TOLERANCE`),
    naming the range seen and the rescaling that fits the convention it looks like; uint8 and
    empty tensors pass. ``what`` names the input in the message (e.g. ``"FAE.encode images"``)."""
    if not images.is_floating_point() or images.numel() == 0:
        return
    seen_low, seen_high = (float(v) for v in torch.aminmax(images.detach().float()))
    if seen_low >= low - RANGE_TOLERANCE and seen_high <= high + RANGE_TOLERANCE:
        return
    hint = _rescale_hint(seen_low, seen_high, low, high)
    raise ImageRangeError(f"{what} must be floats in [{low:g}, {high:g}], got values in "
                          f"[{seen_low:.3g}, {seen_high:.3g}]{hint}")


def _rescale_hint(seen_low: float, seen_high: float, low: float, high: float) -> str:
    """'; looks like <convention>: <fix>' for the conventions images come in, or ''."""
    if seen_high > 2.0 and seen_low >= -RANGE_TOLERANCE:  # 0-255 floats
        return "; looks like 0-255: divide by 255" if low == 0 else "; looks like 0-255: use x / 127.5 - 1"
    if low == 0 and seen_low >= -1 - RANGE_TOLERANCE and seen_high <= 1 + RANGE_TOLERANCE:
        return "; looks like [-1, 1]: use (x + 1) / 2"
    return ""
