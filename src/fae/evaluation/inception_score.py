"""The Inception Score (Salimans et al. 2016) as the ADM suite computes it.

    IS = exp( E_x KL( p(y | x) || p(y) ) ),   p(y) = the mean of p(y | x) over the split

computed on each of ``splits`` consecutive splits of the samples and averaged (ADM: splits of 5,000
samples, i.e. 10 splits of 50K; its score is the mean over splits). p(y | x) is the softmax of the
1008 logits of :mod:`fae.evaluation.inception_v3`. Closed forms: every sample with the same
distribution gives IS = 1 (uniform logits included); one-hot predictions spread evenly over K
classes in every split give IS = K.
"""
from __future__ import annotations

import numpy as np
import torch

from fae.errors import DataError

IS_SPLITS = 10  # ADM: 50,000 samples in splits of 5,000


def split_scores(probs: torch.Tensor, splits: int = IS_SPLITS) -> torch.Tensor:
    """exp(mean KL(p(y|x) || p(y))) of each of ``splits`` consecutive splits of probs [N, K] -> [splits]."""
    if probs.ndim != 2 or probs.shape[0] < splits:
        raise DataError(f"the Inception Score needs probabilities [N, K] with N >= splits = {splits}, "
                        f"got shape {tuple(probs.shape)}")
    scores = []
    for part in torch.tensor_split(probs.double(), splits):  # ADM: consecutive, equal splits
        marginal = part.mean(0, keepdim=True)  # p(y) of the split, [1, K]
        kl = torch.xlogy(part, part) - torch.xlogy(part, marginal)  # 0 log 0 = 0; [n, K]
        scores.append(kl.sum(1).mean().exp())
    return torch.stack(scores)


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) over splits of the Inception Score of logits [N, 1008] (softmax over all of them)."""
    logits = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    scores = split_scores(torch.softmax(logits.double(), dim=1), splits)
    return float(scores.mean()), float(scores.std(unbiased=False))
