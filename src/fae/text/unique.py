"""Encode each distinct caption once: :class:`UniqueCaptionEncoder` wraps a :class:`TextEncoder`
for caption sets with few distinct strings (the demo's generated captions: ~10^2 strings over
thousands of images). Every caption is padded to the encoder's fixed ``max_length``, so a caption's
embedding does not depend on the batch it was encoded in; the wrapper returns the stored rows.
It keeps every distinct caption's embedding in memory: not for CC12M-sized caption sets.
"""
from __future__ import annotations

from typing import Sequence

import torch

from fae.text.encoders import TextEmbeddings


class UniqueCaptionEncoder:
    """``encode(captions)`` like ``encoder``'s, running the encoder on captions not seen before only.

    Args:
        encoder: a :class:`fae.text.TextEncoder` (or anything with ``encode``, ``identity``,
            ``dim`` and ``pooled_dim``).
    """

    def __init__(self, encoder):
        self.encoder = encoder
        self.rows: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.encoded = 0  # captions the wrapped encoder has run on

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def pooled_dim(self) -> int:
        return self.encoder.pooled_dim

    def identity(self) -> dict:
        return self.encoder.identity()

    def encode(self, captions: Sequence[str]) -> TextEmbeddings:
        new = [c for c in dict.fromkeys(captions) if c not in self.rows]  # first-seen order, no repeats
        if new:
            tokens, mask, pooled = self.encoder.encode(new)  # [n, L, D], [n, L], [n, Dp]
            self.rows.update({c: (tokens[k], mask[k], pooled[k]) for k, c in enumerate(new)})
            self.encoded += len(new)
        rows = [self.rows[c] for c in captions]
        return TextEmbeddings(*(torch.stack([r[j] for r in rows]) for j in range(3)))
