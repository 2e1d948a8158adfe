"""Fashion-MNIST from its IDX ``.gz`` files (Debian: ``dataset-fashion-mnist``)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fae.errors import DataError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ROOT_ENV = "FAE_FASHION_MNIST"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file '{stem}(.gz)' not found in '{root}'. Install the Debian "
                    f"package 'dataset-fashion-mnist', or set data.root=<folder> (the demo: data_root=<folder>) "
                    f"or ${ROOT_ENV} to a folder holding the IDX files.")


def idx_files(split: str, root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The (images, labels) IDX files of ``split`` under ``root`` (default $FAE_FASHION_MNIST or
    the Debian folder); a DataError saying how to install them when one is missing."""
    if split not in _FILES:
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got '{split}'")
    folder = Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    images, labels = (_find(folder, stem) for stem in _FILES[split])
    return images, labels


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a numpy array; errors name the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file '{path}': {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"'{path}' is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape))
    if len(raw) - offset != count:
        raise DataError(f"IDX file '{path}' is truncated or corrupt: expected {count} bytes of data, "
                        f"found {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


class FashionMNIST(Dataset):
    """Items are ``(image uint8 [1, 28, 28], label int)``; 60,000 train / 10,000 test.

    Args:
        split: "train" or "test".
        root: folder with the IDX files (default $FAE_FASHION_MNIST or /usr/share/datasets/fashion-mnist).
        limit: keep only the first ``limit`` items (class-balanced order is not guaranteed).
    """

    classes = CLASS_NAMES

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, limit: int | None = None):
        root = Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
        images_file, labels_file = idx_files(split, root)
        images = read_idx(images_file)
        labels = read_idx(labels_file)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"Fashion-MNIST '{root}': {images.shape[0]} images but {labels.shape[0]} labels")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)  # [N, 1, 28, 28] uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))  # [N]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
