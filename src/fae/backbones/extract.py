"""Run a frozen backbone over a dataset: tokens plus labels (and, on request, the CLS / registers).

The token cache (``token_cache.py``) computes its shards with this (pooling for probes is
``fae.evaluation.probe_features``'s rule, not done here). Items of ``dataset`` are ``(uint8 image [C, H, W], int label)`` (the ``fae.data``
convention); batches come from :func:`fae.data.batches.iterate_batches`, so images in a batch must
share a size (``data.image_size`` takes care of that). :func:`extract_tokens` keeps the patch
tokens only (``backbone(images)``); :func:`extract_tokens_and_extra` also keeps the tokens beside
them (``backbone.forward_all(images).extra()``: CLS then registers).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from fae.backbones.base import Backbone
from fae.data.batches import iterate_batches
from fae.errors import ConfigError


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
        progress: show progress (see :mod:`fae.progress`).
        desc: bar label (default: the backbone name).
        indices: which items (default: all).

    Returns:
        (tokens ``[n, T, D]``, labels ``[n]`` int64).
    """
    tokens, labels, _ = _extract(backbone, dataset, batch_size, dtype, progress, desc, indices, extra=False)
    return tokens, labels


@torch.no_grad()
def extract_tokens_and_extra(backbone: Backbone, dataset: Dataset, batch_size: int = 128,
                             dtype: torch.dtype = torch.float32, progress: bool = True,
                             desc: str | None = None, indices: Sequence[int] | range | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`extract_tokens` with the CLS / register tokens too (same arguments).

    Returns:
        (tokens ``[n, T, D]``, labels ``[n]`` int64, extra ``[n, P, D]``: CLS then registers,
        ``P = backbone.info.prefix_tokens``).
    """
    if backbone.info.prefix_tokens == 0:
        raise ConfigError(f"backbone '{backbone.info.name}' has no CLS or register tokens to extract")
    return _extract(backbone, dataset, batch_size, dtype, progress, desc, indices, extra=True)


def _extract(backbone: Backbone, dataset: Dataset, batch_size: int, dtype: torch.dtype, progress: bool,
             desc: str | None, indices: Sequence[int] | range | None, extra: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    indices = range(len(dataset)) if indices is None else indices
    n, info = len(indices), backbone.info
    feats = torch.empty((n, info.num_tokens, info.dim), dtype=dtype)  # allocated once: no list of batches + a copy
    extras = torch.empty((n, info.prefix_tokens, info.dim), dtype=dtype) if extra else None
    labels = torch.empty(n, dtype=torch.long)
    start = 0
    for images, targets in iterate_batches(dataset, batch_size, indices, progress, desc or info.name):
        if extra:
            out = backbone.forward_all(images)
            tokens = out.patches  # [b, T, D] float32
            extras[start:start + len(tokens)] = out.extra().to("cpu", dtype)  # [b, P, D]
        else:
            tokens = backbone(images)  # [b, T, D] float32
        feats[start:start + len(tokens)] = tokens.to("cpu", dtype)
        labels[start:start + len(tokens)] = targets
        start += len(tokens)
    return feats, labels, extras
