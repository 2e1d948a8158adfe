"""Run a frozen backbone over a whole dataset: tokens (or mean-pooled features) plus labels.

Used for linear probes, feature statistics and latent caching. Items of ``dataset`` are
``(uint8 image [C, H, W], int label)`` (the ``fae.data`` convention); images in a batch must share
a size (the datasets' ``image_size`` takes care of that).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from fae.backbones.base import Backbone


def _loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=False, drop_last=False)


def extract_tokens(backbone: Backbone, dataset: Dataset, batch_size: int = 128, pool: bool = False,
                   dtype: torch.dtype = torch.float32, progress: bool = True, desc: str | None = None,
                   num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``dataset`` through ``backbone``, in dataset order, on the CPU.

    Args:
        backbone: a frozen backbone (any device).
        dataset: items ``(image [C, H, W], label)``.
        batch_size: images per forward pass.
        pool: return the token mean ``[N, D]`` instead of all tokens ``[N, T, D]``.
        dtype: storage dtype of the returned features (e.g. float16 to halve memory).
        progress: show a tqdm bar.
        desc: bar label (default: the backbone name).
        num_workers: DataLoader workers.

    Returns:
        (features ``[N, T, D]`` or ``[N, D]``, labels ``[N]`` int64).
    """
    from tqdm.auto import tqdm
    n = len(dataset)
    feats: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.long)
    start = 0
    bar = tqdm(total=n, desc=desc or backbone.info.name, disable=not progress, unit="img")
    for images, targets in _loader(dataset, batch_size, num_workers):
        tokens = backbone(images)  # [b, T, D] float32
        out = tokens.mean(dim=1) if pool else tokens  # [b, D] or [b, T, D]
        if feats is None:  # allocate once: no list of batches plus a concatenated copy
            feats = torch.empty((n, *out.shape[1:]), dtype=dtype)
        feats[start:start + len(out)] = out.to("cpu", dtype)
        labels[start:start + len(out)] = torch.as_tensor(targets, dtype=torch.long)
        start += len(out)
        bar.update(len(out))
    bar.close()
    if feats is None:  # empty dataset
        shape = (0, backbone.dim) if pool else (0, backbone.info.num_tokens, backbone.dim)
        feats = torch.empty(shape, dtype=dtype)
    return feats, labels
