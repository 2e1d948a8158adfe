"""Stream image sets through InceptionV3 into :class:`InceptionStats` (sharded under torchrun).

An *image source* is anything with ``len()`` and ``batch(start, stop) -> uint8 [B, C, H, W]``:
an ADM ``.npz`` array (:class:`ArraySource`), a ``fae.data`` dataset (:class:`DatasetSource`), or
a tensor. Under ``torchrun`` each rank embeds its contiguous shard (``shard_range``); the pool
features are gathered in the original order and the spatial sums are all-reduced, so every rank
ends with the same statistics as a single process would compute.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from fae import distributed as dist
from fae.data.batches import stack_images
from fae.evaluation.inception import POOL_DIM, SPATIAL_DIM, InceptionFeatures, resize_tf_bilinear
from fae.evaluation.inception_v3 import NUM_LOGITS
from fae.evaluation.stats import InceptionStats, StreamingStats
from fae.images import nhwc_to_nchw, quantize
from fae.progress import show_progress


class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """uint8-valued images [stop - start, C, H, W]."""
        ...


class ArraySource:
    """Images held as a uint8 NHWC array (an ADM batch's ``arr_0``; may be memory-mapped).

    Args:
        images: uint8 [N, H, W, C].
    """

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return nhwc_to_nchw(self.images[start:stop])


class TensorSource:
    """Images held as a tensor [N, C, H, W]: uint8, or float in [0, 1], which is quantised to uint8
    first (``fae.images.quantize``: every metric scores what a saved PNG would hold)."""

    def __init__(self, images: torch.Tensor):
        self.images = quantize(images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return self.images[start:stop]


class DatasetSource:
    """A ``fae.data`` dataset (items ``(uint8 image [C, H, W], label)``); images may differ in size.

    Args:
        dataset: the dataset.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        images = [self.dataset[i][0] for i in range(start, stop)]
        if len({tuple(im.shape) for im in images}) > 1:
            # mixed sizes: resize each to the Inception input now (the same resize the network uses)
            return torch.stack([resize_tf_bilinear(im.float()[None])[0] for im in images])
        return stack_images(images, start)  # [B, C, H, W] uint8


def as_source(images) -> ImageSource:
    """Wrap an NHWC uint8 array, an NCHW tensor or a dataset as an image source."""
    if isinstance(images, np.ndarray):
        return ArraySource(images)
    if isinstance(images, torch.Tensor):
        return TensorSource(images)
    if hasattr(images, "batch"):
        return images
    return DatasetSource(images)


def compute_inception_stats(images, net: InceptionFeatures, *, batch_size: int = 50,
                            keep_features: bool = True, progress: bool = True,
                            desc: str = "inception") -> InceptionStats:
    """FID statistics (and, with ``keep_features``, the pool features) of a whole image set.

    Args:
        images: an image source, NHWC uint8 array, NCHW tensor or dataset.
        net: the Inception feature network (see :func:`fae.evaluation.inception.load_inception`); one
            with logits (:mod:`fae.evaluation.inception_v3`) also fills ``logits`` (Inception Score).
        batch_size: images per forward pass on each rank.
        keep_features: keep the [N, 2048] pool features (needed for KID and precision/recall).
        progress: show progress (rank 0 only; see :mod:`fae.progress`).
        desc: bar label.
    """
    source = as_source(images)
    shard = dist.shard_range(len(source))
    pool_stats, spatial_stats = StreamingStats(POOL_DIM), StreamingStats(SPATIAL_DIM)
    kept, logits = [], []  # logits: only from a network with a classifier head (inception_v3)
    bar = show_progress(total=len(shard), desc=desc, unit="img", disable=not (progress and dist.is_main()))
    for start in range(shard.start, shard.stop, batch_size):
        stop = min(start + batch_size, shard.stop)
        out = net(source.batch(start, stop))
        pool_stats.update(out["pool"].double())
        spatial_stats.update(out["spatial"].double())
        if keep_features:
            kept.append(out["pool"].cpu())
        if "logits" in out:
            logits.append(out["logits"].cpu())
        bar.update(stop - start)
    bar.close()
    pool_stats.all_reduce()
    spatial_stats.all_reduce()
    features = None
    if keep_features:
        local = torch.cat(kept) if kept else torch.empty(0, POOL_DIM)
        features = dist.gather_rows(local).numpy()
    gathered = None
    if getattr(net, "has_logits", False):  # every rank gathers, an empty shard included
        gathered = dist.gather_rows(torch.cat(logits) if logits else torch.empty(0, NUM_LOGITS)).numpy()
    return InceptionStats(mu=pool_stats.mean(), sigma=pool_stats.cov(), mu_s=spatial_stats.mean(),
                          sigma_s=spatial_stats.cov(), count=pool_stats.count, pool_features=features,
                          logits=gathered)
