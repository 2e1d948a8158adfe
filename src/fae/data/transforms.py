"""Image transforms of the data pipeline (PIL / uint8 in, uint8 tensors out; no torchvision).

``center_crop_arr`` is the ADM (guided-diffusion) ImageNet preprocessing that FID reference
batches are made with: halve with a BOX filter while the short side is at least twice the target
(cheap, alias-free), then one BICUBIC resize to short side == ``size``, then a center crop.
``dinov2_eval_crop`` is DINOv2's evaluation transform (its linear probe's): one BICUBIC resize to
short side 256, then a centre crop of 224 (ImageNet mean/std follow in the backbone adapter).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM center crop: PIL image -> uint8 array [size, size(, C)]."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    return _center(np.asarray(image), size)


# DINOv2's evaluation transform (dinov2/data/transforms.py, make_classification_eval_transform)
DINOV2_RESIZE, DINOV2_CROP = 256, 224


def dinov2_eval_crop(image: Image.Image, resize: int = DINOV2_RESIZE, crop: int = DINOV2_CROP) -> np.ndarray:
    """DINOv2's evaluation transform: PIL image -> uint8 array [crop, crop(, C)].

    As torchvision's ``Resize(resize, BICUBIC)`` then ``CenterCrop(crop)`` on a PIL image: short
    side -> ``resize``, long side -> ``int(resize * long / short)`` (truncated), one PIL BICUBIC
    resize (up for images smaller than ``resize``), then the crop at ``round((side - crop) / 2)``
    (Python's round, half to even). Unlike :func:`center_crop_arr` the crop keeps
    ``crop / resize`` = 87.5% of the short side; the ADM crop keeps all of it.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    long = int(resize * long / short)
    size = (resize, long) if width <= height else (long, resize)
    arr = np.asarray(image.resize(size, resample=Image.BICUBIC))  # [H, W(, C)]
    top, left = int(round((arr.shape[0] - crop) / 2.0)), int(round((arr.shape[1] - crop) / 2.0))
    return arr[top:top + crop, left:left + crop]


def _center(arr: np.ndarray, size: int) -> np.ndarray:
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def adm_resize_size(original: tuple[int, int], size: int) -> tuple[int, int]:
    """(w, h) that :func:`center_crop_arr` resizes an image of size ``original`` to before its crop."""
    width, height = original
    while min(width, height) >= 2 * size:
        width, height = width // 2, height // 2
    scale = size / min(width, height)
    return round(width * scale), round(height * scale)


def center_crop_drafted(image: Image.Image, size: int, original: tuple[int, int],
                        box: tuple[float, float, float, float]) -> np.ndarray:
    """The ADM crop of a JPEG that libjpeg decoded at reduced scale (``Image.draft``): ``box`` is the
    original image's extent in the reduced pixels (what ``draft`` returns). One BICUBIC resize from
    that extent to the size the exact path resizes to (:func:`adm_resize_size`), then the same crop:
    the geometry of the exact path, with libjpeg's scaled IDCT in place of its BOX halvings."""
    image = image.resize(adm_resize_size(original, size), resample=Image.BICUBIC, box=box)
    return _center(np.asarray(image), size)


def to_chw_uint8(arr: np.ndarray) -> torch.Tensor:
    """uint8 array [H, W] or [H, W, C] -> contiguous tensor [C, H, W]."""
    t = torch.from_numpy(np.array(arr, order="C"))  # own, writable copy (PIL arrays are read-only)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def random_hflip(image: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Flip [C, H, W] left-right with probability p (torch RNG, so DataLoader seeding applies)."""
    return image.flip(-1) if torch.rand(()) < p else image


def center_crop_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """ADM center crop applied to a uint8 tensor [C, H, W] (C = 1 or 3) -> [C, size, size]."""
    arr = image.permute(1, 2, 0).numpy()  # [H, W, C]
    pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    return to_chw_uint8(center_crop_arr(pil, size))
