"""Linear probing: a multinomial logistic-regression head on frozen, pooled features.

The paper measures how much pretrained information an FAE keeps by a linear probe on DINOv2
features reconstructed by the FAE (86.17% vs 87.00% for raw DINOv2-g on ImageNet; DINOv2's own
README lists 87.1% for ViT-g/14 with registers, 86.5% without). Here the head
is trained full-batch with L-BFGS on precomputed features (fast on CPU: a few seconds for 10^4 x
10^3 features), with L2 weight decay, on standardised features (train-split mean/std).
:func:`train_linear_head` returns the fitted head (standardisation folded in) for use on other
features: the paper's protocol scores one head, trained on raw features, on the raw and on the
FAE-reconstructed test features (``fae.evaluation.linear_head``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fae.distributed import torch_threads
from fae.errors import DataError
from fae.evaluation.linear_head import LinearHead, topk_accuracy


def _as_tensor(x, dtype) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.detach().to("cpu", dtype)


def _check(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> None:
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise DataError(f"linear probe needs pooled features [N, D] with one D, got train "
                        f"{tuple(train_x.shape)} and test {tuple(test_x.shape)}")
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise DataError(f"features and labels differ in count: train {train_x.shape[0]} vs "
                        f"{train_y.shape[0]}, test {test_x.shape[0]} vs {test_y.shape[0]}")
    if train_x.shape[0] == 0 or test_x.shape[0] == 0:
        raise DataError("linear probe got an empty train or test set")
    if (train_y < 0).any() or (test_y < 0).any():
        raise DataError("linear probe needs class labels >= 0 (this dataset is unlabelled)")


def _standardizer(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], std [D]) of the train split: each feature to zero mean / unit std."""
    return train_x.mean(0), train_x.std(0).clamp_min(1e-6)  # constant features stay 0


def train_linear_head(train_x, train_y, *, epochs: int = 100, seed: int = 0, standardize: bool = True,
                      weight_decay: float = 3e-2, num_classes: int | None = None,
                      dtype: torch.dtype = torch.float64) -> LinearHead:
    """A linear classifier fitted on ``train_x`` [N, D], returned as a :class:`LinearHead` on *raw*
    features: the standardisation (train mean/std) is folded into its weight and bias
    (W' = W / std, b' = b - W' mean), so the head applies to any features unchanged - raw test
    features, FAE-reconstructed ones (the paper's protocol) - and saves in the released format.
    Arguments as for :func:`linear_probe` (``num_classes`` default: max label + 1).
    """
    train_x, train_y = _as_tensor(train_x, dtype), _as_tensor(train_y, torch.long)
    _check(train_x, train_y, train_x[:1], train_y[:1])
    dim = train_x.shape[1]
    mean, std = (_standardizer(train_x) if standardize
                 else (torch.zeros(dim, dtype=dtype), torch.ones(dim, dtype=dtype)))
    classes = num_classes or int(train_y.max()) + 1
    weight, bias = _fit((train_x - mean) / std, train_y, classes, epochs, seed, weight_decay)
    folded = weight / std  # [K, D]
    return LinearHead(folded, bias - folded @ mean)


def linear_probe(train_x, train_y, test_x, test_y, *, epochs: int = 100, seed: int = 0,
                 standardize: bool = True, weight_decay: float = 3e-2, num_classes: int | None = None,
                 dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """Train a linear classifier on ``train_x`` and score it on ``test_x``.

    Args:
        train_x, test_x: pooled features [N, D] (numpy or torch).
        train_y, test_y: integer class labels [N].
        epochs: L-BFGS iterations over the full training set (each is one full-batch pass plus
            line-search evaluations).
        seed: seeds the (small random) initial weights; the result is deterministic given it.
        standardize: z-score features with the train split's mean/std first.
        weight_decay: L2 penalty ``weight_decay / 2 * |W|^2`` added to the mean cross-entropy.
        num_classes: number of classes (default: max label + 1 over both splits).
        dtype: compute dtype (float64: reproducible and well-conditioned for L-BFGS).

    Returns:
        ``{"top1", "top5", "train_top1", "train_loss", "num_train", "num_test", "num_classes", "dim"}``.
    """
    return fit_linear_probe(train_x, train_y, test_x, test_y, epochs=epochs, seed=seed, standardize=standardize,
                            weight_decay=weight_decay, num_classes=num_classes, dtype=dtype)[0]


def fit_linear_probe(train_x, train_y, test_x, test_y, *, epochs: int = 100, seed: int = 0,
                     standardize: bool = True, weight_decay: float = 3e-2, num_classes: int | None = None,
                     dtype: torch.dtype = torch.float64) -> tuple[dict[str, float], LinearHead]:
    """:func:`linear_probe`'s scores and the head they came from (one fit, e.g. to save the head)."""
    train_x, test_x = _as_tensor(train_x, dtype), _as_tensor(test_x, dtype)
    train_y, test_y = _as_tensor(train_y, torch.long), _as_tensor(test_y, torch.long)
    _check(train_x, train_y, test_x, test_y)
    classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    head = train_linear_head(train_x, train_y, epochs=epochs, seed=seed, standardize=standardize,
                             weight_decay=weight_decay, num_classes=classes, dtype=dtype)
    with torch.no_grad():
        train_logits, test_logits = head.logits(train_x), head.logits(test_x)  # [N, K]
        train_loss = F.cross_entropy(train_logits, train_y)
    scores = {"top1": topk_accuracy(test_logits, test_y, 1), "top5": topk_accuracy(test_logits, test_y, 5),
              "train_top1": topk_accuracy(train_logits, train_y, 1), "train_loss": float(train_loss),
              "num_train": int(train_x.shape[0]), "num_test": int(test_x.shape[0]),
              "num_classes": classes, "dim": int(train_x.shape[1])}
    return scores, head


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int, seed: int,
         weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch L-BFGS on mean cross-entropy + L2 (weights only, not the bias)."""
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(classes, x.shape[1], generator=gen, dtype=x.dtype) * 0.01).requires_grad_()
    bias = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=epochs, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch_threads(1), torch.enable_grad():  # tiny latency-bound matmuls: threads only add sync overhead
        optimizer.step(closure)
    return weight.detach(), bias.detach()
