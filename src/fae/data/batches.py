"""Batches of a map-style image dataset, in order: the one loop every pass over a dataset uses
(token caches, feature statistics, probes, reconstruction metrics, Inception statistics).

Items are ``(uint8 image [C, H, W], int label)`` (the ``fae.data`` convention). Training does not
use this: the engine's seeded, sharded sampler feeds it (``fae.training.sampler``).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from fae.errors import DataError
from fae.progress import show_progress


def stack_images(images: Sequence[torch.Tensor], first_index: int = 0) -> torch.Tensor:
    """Stack same-size images into [B, C, H, W]; mixed sizes are a DataError naming the sizes."""
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise DataError(f"images {first_index}..{first_index + len(images) - 1} differ in size "
                        f"({', '.join(str(list(s)) for s in sorted(shapes))}); set data.image_size to "
                        f"crop every image to one size")
    return torch.stack(list(images))


def iterate_batches(dataset: Dataset, batch_size: int, indices: Sequence[int] | range | None = None,
                    progress: bool = False, desc: str = "images") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images uint8 [b, C, H, W], labels int64 [b])`` over ``indices`` (default: all), in order.

    Args:
        dataset: items ``(image, label)``.
        batch_size: items per batch.
        indices: which items (e.g. this rank's ``fae.distributed.shard_range``).
        progress: show progress (see :mod:`fae.progress`).
        desc: the bar's label.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = range(len(dataset)) if indices is None else indices
    bar = show_progress(total=len(indices), desc=desc, unit="img", disable=not progress)
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            items = [dataset[int(i)] for i in chunk]
            images = stack_images([image for image, _ in items], int(chunk[0]))
            labels = torch.tensor([int(label) for _, label in items], dtype=torch.long)
            bar.update(len(items))
            yield images, labels
    finally:
        bar.close()


@torch.no_grad()
def map_batches(fn, x: torch.Tensor, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``fn`` applied to ``x`` [N, ...] in slices of ``batch_size`` along dim 0, concatenated on the CPU.

    The tensor counterpart of :func:`iterate_batches` (tokens, latents, images already in memory):
    each slice is moved to ``device`` first (when given), so a large set never sits on it at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = [fn(part.to(device) if device is not None else part).cpu() for part in x.split(batch_size)]
    return torch.cat(parts) if parts else x[:0]
