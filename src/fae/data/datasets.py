"""One config section and one factory for every image dataset FAE reads.

``build_dataset(DataConfig(...))`` returns a ``torch.utils.data.Dataset`` whose items are
``(uint8 image [C, H, W], int label)`` (label -1 when unlabelled). Backbones do their own
resizing/normalisation, so datasets stay uint8 and cheap to batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fae.data.captions import CaptionFolder
from fae.data.fashion_mnist import CLASS_NAMES, FashionMNIST, idx_files
from fae.data.imagefolder import ImageFolder, ImageFolderUnlabelled
from fae.data.transforms import center_crop_tensor, random_hflip
from fae.data.webdataset_shards import WebDatasetCaptions, shard_urls
from fae.errors import ConfigError, DataError


@dataclass
class DataConfig:
    """Which images to read.

    Args:
        name: "fashion-mnist" (IDX files), "imagefolder" (ImageNet layout, labelled), "folder"
            (every image below ``root``, unlabelled), "captions" (images below ``root`` named by the
            ``captions`` file) or "webdataset" (tar shards: ``root`` is a folder or brace pattern);
            the last two are captioned (items ``(image, -1, caption)``, ``fae.data.captions``).
        root: dataset folder (fashion-mnist: default $FAE_FASHION_MNIST or
            /usr/share/datasets/fashion-mnist; required for the folder datasets).
        split: "train"/"test" for fashion-mnist; for folders the sub-folder ``root/split`` when it
            exists, else ``root`` itself.
        limit: keep only this many items (fashion-mnist: the first ones; folders: evenly spaced).
        image_size: ADM center crop to this size (BOX halvings, BICUBIC resize, center crop);
            None keeps the stored size (folders then need equal-size images to batch).
        flip: random horizontal flip with p = 0.5 (training augmentation).
        skip_corrupt: replace unreadable images by the next readable one with a warning, instead
            of raising DataError (folders only).
        captions: the JSONL / CSV captions file of ``name: captions``.
        decode: "exact" (default) or "draft" for the folder datasets: "draft" decodes large JPEGs
            at 1/2, 1/4 or 1/8 scale inside libjpeg instead of halving them after a full decode
            (several times faster on such files; the crop differs by about one grey level on
            average: ``fae.data.imagefolder``, docs/performance.md). Keep "exact" for FID
            reference sets, which the ADM suite builds with the exact path.
    """

    name: Literal["fashion-mnist", "imagefolder", "folder", "captions", "webdataset"] = "fashion-mnist"
    root: str | None = None
    split: str = "train"
    limit: int | None = None
    image_size: int | None = None
    flip: bool = False
    skip_corrupt: bool = False
    captions: str | None = field(default=None, metadata={"omit_if_default": True})
    decode: Literal["exact", "draft"] = field(default="exact", metadata={"omit_if_default": True})

    def validate(self) -> None:
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"config key 'data.limit': must be positive, got {self.limit}")
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError(f"config key 'data.image_size': must be positive, got {self.image_size}")
        if self.name in ("imagefolder", "folder", "captions", "webdataset") and not self.root:
            raise ConfigError(f"config key 'data.root': dataset '{self.name}' needs a folder")
        if self.decode == "draft" and self.name not in ("imagefolder", "folder"):
            raise ConfigError(f"config key 'data.decode': 'draft' is for the image folders (imagefolder, "
                              f"folder), not '{self.name}'")
        if (self.name == "captions") != (self.captions is not None):
            raise ConfigError("config key 'data.captions' (a JSONL / CSV captions file) goes with "
                              f"data.name: captions, and only with it (data.name is '{self.name}')")

    def __post_init__(self) -> None:
        self.validate()


class TransformedDataset(Dataset):
    """Wraps an in-memory dataset (Fashion-MNIST) with the ADM crop and/or a random flip.

    Args:
        base: dataset of ``(uint8 image [C, H, W], label)``.
        image_size: ADM center crop size, or None.
        flip: random horizontal flip with p = 0.5.
    """

    def __init__(self, base: Dataset, image_size: int | None, flip: bool):
        self.base, self.image_size, self.flip = base, image_size, flip
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[i]
        if self.image_size is not None and tuple(image.shape[-2:]) != (self.image_size,) * 2:
            image = center_crop_tensor(image, self.image_size)
        return (random_hflip(image) if self.flip else image), label


FOLDER_DATASETS = ("imagefolder", "folder")


def build_dataset(cfg: DataConfig, split: str | None = None,
                  crop: Callable[[Image.Image], np.ndarray] | None = None) -> Dataset:
    """The dataset ``cfg`` describes; ``split`` overrides ``cfg.split`` (e.g. "test" for eval);
    ``crop`` replaces the ADM crop of the folder datasets (``fae eval probe``'s DINOv2 transform)."""
    cfg.validate()
    split = split or cfg.split
    if crop is not None and cfg.name not in FOLDER_DATASETS:
        raise ConfigError(f"an image crop function applies to the folder datasets {list(FOLDER_DATASETS)}, "
                          f"not '{cfg.name}'")
    if cfg.name == "fashion-mnist":
        base = FashionMNIST(split=split, root=cfg.root, limit=cfg.limit)
        return TransformedDataset(base, cfg.image_size, cfg.flip) if (cfg.image_size or cfg.flip) else base
    if cfg.name == "captions":
        return CaptionFolder(cfg.root, cfg.captions, cfg.limit, cfg.image_size, cfg.flip, cfg.skip_corrupt)
    if cfg.name == "webdataset":
        return WebDatasetCaptions(cfg.root, cfg.limit, cfg.image_size, cfg.flip)
    cls = ImageFolder if cfg.name == "imagefolder" else ImageFolderUnlabelled
    return cls(cfg.root, split=split, limit=cfg.limit, image_size=cfg.image_size, flip=cfg.flip,
               skip_corrupt=cfg.skip_corrupt, decode=cfg.decode, crop=crop)


# Where each kind of dataset comes from: what a check before compute says when one is missing.
DATA_SOURCES = {
    "fashion-mnist": "apt-get install dataset-fashion-mnist (or scripts/fashion-mnist.sh; elsewhere set "
                     "$FAE_FASHION_MNIST or data.root to a folder holding the four IDX files)",
    "imagefolder": "put the images at <data.root>/<split>/<class>/<image> (ImageNet: extract ILSVRC2012 "
                   "train and val, val sorted into its 1000 class folders)",
    "folder": "put the images below <data.root>",
    "captions": "put the images below <data.root>, named by the data.captions file",
    "webdataset": "point data.root at a folder of .tar shards or a brace pattern",
}


def data_root_label(cfg: DataConfig, split: str | None = None) -> str:
    """How a checklist names the data a config reads, e.g. ``imagefolder:/data/imagenet (train)``."""
    return f"{cfg.name}:{cfg.root or '(default folder)'} ({split or cfg.split})"


def check_data(cfg: DataConfig, split: str | None = None) -> None:
    """The files ``build_dataset(cfg, split)`` reads are there, without decoding an image or
    walking a large tree: the IDX files, the root folder (with class folders for
    ``imagefolder``), the captions file, the shards. A DataError naming ``data.root`` otherwise."""
    split = split or cfg.split
    if cfg.name == "fashion-mnist":
        idx_files(split, cfg.root)
        return
    if cfg.name == "webdataset":
        shard_urls(cfg.root)
        return
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"config key 'data.root': '{cfg.root}' {what} ({cfg.name} data): {DATA_SOURCES[cfg.name]}")
    if cfg.name == "captions" and not Path(cfg.captions).is_file():
        raise DataError(f"config key 'data.captions': '{cfg.captions}' does not exist")
    if cfg.name == "imagefolder" and class_count(cfg, split) == 0:
        raise DataError(f"config key 'data.root': '{_split_folder(root, split)}' has no class sub-folders "
                        f"(ImageNet layout <root>/<split>/<class>/<image>); use data.name=folder for unlabelled images")


def class_count(cfg: DataConfig, split: str | None = None) -> int | None:
    """How many classes the labels of ``cfg``'s data index (None: unlabelled data), read from the
    folder names alone."""
    if cfg.name == "fashion-mnist":
        return len(CLASS_NAMES)
    if cfg.name != "imagefolder":
        return None
    folder = _split_folder(Path(cfg.root).expanduser(), split or cfg.split)
    return sum(1 for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _split_folder(root: Path, split: str) -> Path:
    """``root/split`` when it exists, else ``root`` (as the folder datasets read them)."""
    return root / split if (root / split).is_dir() else root


def synthetic_images(cfg: DataConfig, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``size`` random uint8 images [size, C, S, S] shaped as ``cfg``'s items after the crop
    (Fashion-MNIST: 1 channel, 28 px unless ``image_size``; the folder datasets: RGB at
    ``image_size``, which they then need). For plans and rehearsals of the data's shape."""
    channels = 1 if cfg.name == "fashion-mnist" else 3
    side = cfg.image_size or (28 if cfg.name == "fashion-mnist" else None)
    if side is None:
        raise ConfigError(f"config key 'data.image_size' is needed to plan on '{cfg.name}' images "
                          "(without it the stored size is used, which is not known before reading)")
    return torch.randint(0, 256, (size, channels, side, side), dtype=torch.uint8, device=device)


def check_batchable(dataset: Dataset) -> None:
    """Call before writing any output of a pass that batches ``dataset``: image folders without
    ``image_size`` must hold one image size (a DataError naming two files otherwise)."""
    check = getattr(dataset, "check_batchable", None)
    if callable(check):
        check()
