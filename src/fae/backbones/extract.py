"""Run a frozen backbone over a dataset: tokens plus labels.

The token cache (``token_cache.py``) computes its shards with this (pooling for probes is
``fae.evaluation.probe_features``'s rule, not done here). Items of ``dataset`` are ``(uint8 image [C, H, W], int label)`` (the ``fae.data``
convention); batches come from :func:`fae.data.batches.iterate_batches`, so images in a batch must
share a size (``data.image_size`` takes care of that).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from fae.backbones.base import Backbone
from fae.data.batches import iterate_batches


@torch.no_grad()
def extract_tokens(backbone: Backbone, dataset: Dataset, batch_size: int = 128,
                   dtype: torch.dtype = torch.float32, progress: bool = True, desc: str | None = None,
                   indices: Sequence[int] | range | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``dataset`` (or its ``indices``) through ``backbone``, in order, on the CPU.

    Args:
        backbone: a frozen backbone (any device).
        dataset: items ``(image [C, H, W], label)``.
        batch_size: images per forward pass.
        dtype: storage dtype of the returned features (e.g. float16 to halve memory).
        progress: show a tqdm bar.
        desc: bar label (default: the backbone name).
        indices: which items (default: all).

    Returns:
        (tokens ``[n, T, D]``, labels ``[n]`` int64).
    """
    indices = range(len(dataset)) if indices is None else indices
    n = len(indices)
    feats = torch.empty((n, backbone.info.num_tokens, backbone.dim), dtype=dtype)  # allocated once: no list of batches + a copy
    labels = torch.empty(n, dtype=torch.long)
    start = 0
    for images, targets in iterate_batches(dataset, batch_size, indices, progress, desc or backbone.info.name):
        tokens = backbone(images)  # [b, T, D] float32
        feats[start:start + len(tokens)] = tokens.to("cpu", dtype)
        labels[start:start + len(tokens)] = targets
        start += len(tokens)
    return feats, labels
