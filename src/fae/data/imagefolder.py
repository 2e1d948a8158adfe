"""Image folders: the ImageNet layout (class sub-folders) and a flat unlabelled folder.

Items are ``(uint8 image [3, H, W], int label)``; label -1 when unlabelled. Class indices are the
sorted sub-folder names (ImageNet: sorted wnids -> 0..999, the standard order). With
``image_size`` every image gets the ADM center crop; with ``crop`` (``fae eval probe``'s DINOv2
evaluation transform, ``fae.data.transforms.dinov2_eval_crop``) that function instead. An
unreadable or corrupt file raises :class:`fae.errors.DataError` naming the file; with
``skip_corrupt=True`` it is replaced by the next readable item and counted in a warning instead -
never a silent wrong sample.

Decoding (``decode``): "exact" decodes every JPEG at full size, then the ADM crop halves it with a
BOX filter while its short side is >= 2x the crop (``fae.data.transforms.center_crop_arr``).
"draft" lets libjpeg do those halvings inside the decoder (PIL ``Image.draft``: DCT scaling by 1/2,
1/4 or 1/8, never below the crop size), then the same ADM crop runs on the smaller image. Only
JPEGs whose short side is >= 2x the crop change (ImageNet at 256: the larger photos), and they
decode several times faster; the crop differs from the exact one by about one grey level on
average (bench/loader_throughput.py measures speed and difference; docs/performance.md has the
figures). Other formats and smaller JPEGs decode identically either way.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fae.data.transforms import center_crop_arr, center_crop_drafted, random_hflip, to_chw_uint8
from fae.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
DECODE_MODES = ("exact", "draft")

# Images/s of one loader worker (one process, one core) on the ImageNet path: JPEG decode + ADM
# crop to 256 + flip, by decode mode. Measured by bench/loader_throughput.py on 2,000 synthetic
# JPEGs of ImageNet-like sizes (quality 90, 0.41 MP on average, 17% with short side >= 512),
# 2026-12-04, on a quiet 2-core x86-64 cloud VM, PIL 13 with
# libjpeg-turbo: a conservative figure; an idle server core is faster. Re-measure on the training
# machine (bench/loader_throughput.py --folder /data/imagenet) and pass the figure in.
LOADER_IMAGES_PER_S = {"exact": 77.6, "draft": 109.7}


@dataclass(frozen=True)
class LoaderRate:
    """A loader worker's images/s and where the figure comes from (what ``fae plan`` prints)."""

    images_per_s: float
    source: str


# the default decode path's rate (data.decode: exact)
LOADER_RATE = LoaderRate(LOADER_IMAGES_PER_S["exact"],
                         "measured 2026-12-04 by bench/loader_throughput.py on a quiet 2-core VM, decode exact")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """All image files below ``folder`` (recursive), sorted for a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def load_rgb(path: Path) -> Image.Image:
    """Decode fully (so truncation is caught here, not later) and convert to RGB."""
    try:
        with Image.open(path) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise DataError(f"cannot read image '{path}': {e}") from None


def load_crop_draft(path: Path, size: int) -> np.ndarray:
    """The ADM crop to ``size`` of ``path``, a JPEG decoded at 1/2, 1/4 or 1/8 scale when its short
    side stays >= ``size`` (the halvings the exact path does with its BOX filter while the short
    side is >= 2 x ``size``); other files and small JPEGs take the exact path."""
    try:
        with Image.open(path) as img:
            original = img.size
            drafted = img.draft("RGB", (size, size)) if img.format == "JPEG" else None
            img.load()
            image = img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise DataError(f"cannot read image '{path}': {e}") from None
    if drafted is None or image.size == original:
        return center_crop_arr(image, size)
    return center_crop_drafted(image, size, original, drafted[1])


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """``limit`` indices spread over ``range(n)`` (so a limited ImageFolder still spans all classes)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, num=limit).round().astype(np.int64)


def check_one_size(files: list[Path], hint: str = "set data.image_size to crop every image to one size") -> None:
    """Every file has the size of the first: compares the headers (no pixels are decoded), so a
    command that batches can fail before it writes anything, naming two files (``hint``: what to do)."""
    first, first_size = None, None
    for path in files:
        try:
            with Image.open(path) as img:
                size = img.size
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
            continue  # an unreadable file is reported (or skipped) when it is read
        if first is None:
            first, first_size = path, size
        elif size != first_size:
            raise DataError(f"images differ in size: '{first}' is {first_size[0]}x{first_size[1]}, "
                            f"'{path}' is {size[0]}x{size[1]}; {hint}")


def workers_needed(step_images_per_s: float, per_worker_images_per_s: float | None = None,
                   decode: str = "exact", headroom: float = 1.25) -> int:
    """Loader workers (processes, one core each) that keep up with a training step consuming
    ``step_images_per_s`` images/s (all ranks of one machine together, for a per-machine count),
    with ``headroom`` for slow files and busy cores.

    ``per_worker_images_per_s`` defaults to the measured rate of ``decode``'s path
    (:data:`LOADER_IMAGES_PER_S`); pass the figure of your machine (bench/loader_throughput.py).
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got '{decode}'")
    rate = per_worker_images_per_s or LOADER_IMAGES_PER_S[decode]
    if rate <= 0 or step_images_per_s < 0:
        raise ValueError(f"need a positive per-worker rate and a step rate >= 0, got {rate}, {step_images_per_s}")
    return max(1, math.ceil(headroom * step_images_per_s / rate))


class ImageFiles(Dataset):
    """A list of image files with optional labels (the shared logic of both folder datasets).

    Args:
        files: image paths.
        labels: one int per file, or None (unlabelled -> -1).
        image_size: ADM center crop size (None keeps each image's own size; batching then needs
            one size: :meth:`check_batchable`).
        flip: random horizontal flip (p = 0.5).
        skip_corrupt: replace an unreadable file by the next readable one, with a warning.
        decode: "exact" or "draft" (JPEGs decoded at a reduced scale, see the module docstring;
            only with ``image_size``).
        crop: PIL RGB image -> uint8 array [S, S, 3] of one size, used instead of the ADM crop
            (the probe's ``dinov2_eval_crop``); excludes ``image_size``.
    """

    def __init__(self, files: list[Path], labels: list[int] | None = None, image_size: int | None = None,
                 flip: bool = False, skip_corrupt: bool = False, decode: str = "exact",
                 crop: Callable[[Image.Image], np.ndarray] | None = None):
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got '{decode}'")
        if crop is not None and image_size is not None:
            raise ValueError("ImageFiles takes image_size (the ADM crop) or crop, not both")
        self.decode, self.crop = decode, crop
        self.files = files
        self.labels = labels
        self.image_size = image_size
        self.flip = flip
        self.skip_corrupt = skip_corrupt
        self.skipped: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def check_batchable(self) -> None:
        """Without a crop, batches need one image size: a DataError naming two files otherwise."""
        if self.image_size is None and self.crop is None:
            check_one_size(self.files)

    def _read(self, i: int) -> torch.Tensor:
        if self.decode == "draft" and self.image_size:
            return to_chw_uint8(load_crop_draft(self.files[i], self.image_size))  # [3, S, S] uint8
        image = load_rgb(self.files[i])
        if self.crop is not None:
            return to_chw_uint8(self.crop(image))  # [3, S, S] uint8
        arr = center_crop_arr(image, self.image_size) if self.image_size else np.asarray(image)
        return to_chw_uint8(arr)  # [3, H, W] uint8

    def _read_or_skip(self, i: int) -> tuple[torch.Tensor, int]:
        for step in range(len(self.files)):
            j = (i + step) % len(self.files)
            try:
                return self._read(j), j
            except DataError as e:
                if not self.skip_corrupt:
                    raise
                if self.files[j] not in self.skipped:
                    self.skipped.add(self.files[j])
                    warnings.warn(f"{e}; skipped ({len(self.skipped)} corrupt file(s) so far, "
                                  f"replaced by the next readable image)", stacklevel=3)
        raise DataError(f"no readable image among the {len(self.files)} files of this dataset")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, j = self._read_or_skip(i)
        if self.flip:
            image = random_hflip(image)
        return image, (self.labels[j] if self.labels is not None else -1)


def _split_dir(root: str | os.PathLike, split: str | None) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder '{root}' does not exist")
    if split and (root / split).is_dir():  # root/train/<class>/..., root/val/<class>/...
        return root / split
    return root


class ImageFolder(ImageFiles):
    """ImageNet layout: ``root[/split]/<class>/<image>``; classes = sorted sub-folder names.

    Args:
        root: dataset folder (if ``root/split`` exists it is used).
        split: sub-folder name such as "train" / "val" (optional).
        limit: keep ``limit`` evenly spaced images (all classes stay represented).
        image_size, flip, skip_corrupt, decode, crop: see :class:`ImageFiles`.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, limit: int | None = None,
                 image_size: int | None = None, flip: bool = False, skip_corrupt: bool = False,
                 decode: str = "exact", crop: Callable[[Image.Image], np.ndarray] | None = None):
        folder = _split_dir(root, split)
        self.classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"image folder '{folder}' has no class sub-folders (ImageNet layout "
                            f"<root>/<class>/<image>); use data.name=folder for unlabelled images")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        files, labels = [], []
        for c in self.classes:
            found = list_images(folder / c)
            files += found
            labels += [self.class_to_idx[c]] * len(found)
        if not files:
            raise DataError(f"image folder '{folder}' holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        keep = evenly_spaced(len(files), limit)
        super().__init__([files[k] for k in keep], [labels[k] for k in keep], image_size, flip, skip_corrupt,
                         decode, crop)


class ImageFolderUnlabelled(ImageFiles):
    """Every image below ``root[/split]`` (recursive, sorted), label -1.

    Args: as :class:`ImageFolder`.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, limit: int | None = None,
                 image_size: int | None = None, flip: bool = False, skip_corrupt: bool = False,
                 decode: str = "exact", crop: Callable[[Image.Image], np.ndarray] | None = None):
        folder = _split_dir(root, split)
        files = list_images(folder)
        if not files:
            raise DataError(f"image folder '{folder}' holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        keep = evenly_spaced(len(files), limit)
        super().__init__([files[k] for k in keep], None, image_size, flip, skip_corrupt, decode, crop)
