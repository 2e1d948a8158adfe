"""Image folders: the ImageNet layout (class sub-folders) and a flat unlabelled folder.

Items are ``(uint8 image [3, H, W], int label)``; label -1 when unlabelled. Class indices are the
sorted sub-folder names (ImageNet: sorted wnids -> 0..999, the standard order). With
``image_size`` every image gets the ADM center crop. An unreadable or corrupt file raises
:class:`fae.errors.DataError` naming the file; with ``skip_corrupt=True`` it is replaced by the next
readable item and counted in a warning instead - never a silent wrong sample.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fae.data.transforms import center_crop_arr, random_hflip, to_chw_uint8
from fae.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


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
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise DataError(f"cannot read image '{path}': {e}") from None


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """``limit`` indices spread over ``range(n)`` (so a limited ImageFolder still spans all classes)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, num=limit).round().astype(np.int64)


def check_one_size(files: list[Path]) -> None:
    """Every file has the size of the first: compares the headers (no pixels are decoded), so a
    command that batches can fail before it writes anything, naming two files."""
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
                            f"'{path}' is {size[0]}x{size[1]}; set data.image_size to crop every "
                            f"image to one size")


class ImageFiles(Dataset):
    """A list of image files with optional labels (the shared logic of both folder datasets).

    Args:
        files: image paths.
        labels: one int per file, or None (unlabelled -> -1).
        image_size: ADM center crop size (None keeps each image's own size; batching then needs
            one size: :meth:`check_batchable`).
        flip: random horizontal flip (p = 0.5).
        skip_corrupt: replace an unreadable file by the next readable one, with a warning.
    """

    def __init__(self, files: list[Path], labels: list[int] | None = None, image_size: int | None = None,
                 flip: bool = False, skip_corrupt: bool = False):
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
        if self.image_size is None:
            check_one_size(self.files)

    def _read(self, i: int) -> torch.Tensor:
        image = load_rgb(self.files[i])
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
        image_size, flip, skip_corrupt: see :class:`ImageFiles`.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, limit: int | None = None,
                 image_size: int | None = None, flip: bool = False, skip_corrupt: bool = False):
        folder = _split_dir(root, split)
        self.classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"image folder '{folder}' has no class sub-folders (ImageNet layout "
                            f"<root>/<class>/<image>); use name 'folder' for unlabelled images")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        files, labels = [], []
        for c in self.classes:
            found = list_images(folder / c)
            files += found
            labels += [self.class_to_idx[c]] * len(found)
        if not files:
            raise DataError(f"image folder '{folder}' holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        keep = evenly_spaced(len(files), limit)
        super().__init__([files[k] for k in keep], [labels[k] for k in keep], image_size, flip, skip_corrupt)


class ImageFolderUnlabelled(ImageFiles):
    """Every image below ``root[/split]`` (recursive, sorted), label -1.

    Args: as :class:`ImageFolder`.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, limit: int | None = None,
                 image_size: int | None = None, flip: bool = False, skip_corrupt: bool = False):
        folder = _split_dir(root, split)
        files = list_images(folder)
        if not files:
            raise DataError(f"image folder '{folder}' holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        keep = evenly_spaced(len(files), limit)
        super().__init__([files[k] for k in keep], None, image_size, flip, skip_corrupt)
