"""A linear classification head in the file format of DINOv2's released ImageNet heads, and the
one rule that turns backbone (or FAE-reconstructed) tokens into that head's input.

The released heads (``dinov2_vitg14_linear_head.pth``, ``dinov2_vitg14_reg4_linear_head.pth``, ...
from ``dl.fbaipublicfiles.com/dinov2``) are the state dict of one ``nn.Linear(2 * D, 1000)``: the
keys ``weight`` [1000, 2D] and ``bias`` [1000]. Their input (DINOv2's ``_LinearClassifierWrapper``
with ``layers=1``) is the final-LayerNorm CLS token concatenated with the mean of the patch tokens
(registers excluded), ``concat(cls, mean(patches))``; the ``_reg4`` heads have the same keys and
shapes (the registers never enter the head). DINOv2's README lists 86.5% (ViT-g/14) and 87.1%
(ViT-g/14 + registers) ImageNet top-1 for them; the FAE paper's Table 1 "87.00% raw" is closest
to the latter.
The ``linear4`` heads (``nn.Linear(5 * D, 1000)``) read the CLS tokens of the last four blocks,
which an FAE (trained on the last block's tokens) does not reconstruct: they are refused.

A head trained here (:func:`fae.evaluation.probe.train_linear_head`) is saved in the same format,
with the standardisation it was trained under folded into ``weight`` / ``bias``, so it applies to
raw pooled features unchanged. Its input is either ``mean(patches)`` (in_features = D: backbones
without a CLS token, e.g. the demo's EfficientNet) or ``concat(cls, mean(patches))`` (2D):
:func:`head_input` picks by the head's width.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fae.errors import ConfigError, DataError
from fae.io import atomic_torch_save


@dataclass
class LinearHead:
    """logits = features @ weight.T + bias.

    Args:
        weight: [K, F] (K classes, F input features).
        bias: [K].
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self):
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise DataError(f"a linear head needs weight [K, F] and bias [K], got "
                            f"{list(self.weight.shape)} and {list(self.bias.shape)}")

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, F] -> logits [N, K] (float64 on the CPU: exact ranks for the accuracy)."""
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise DataError(f"this head takes features [N, {self.in_features}], got {list(features.shape)}")
        x = features.detach().to("cpu", torch.float64)
        return x @ self.weight.to(torch.float64).T + self.bias.to(torch.float64)

    def save(self, path: str | Path) -> Path:
        """Write ``{"weight", "bias"}`` (float32) with ``torch.save``, atomically."""
        return atomic_torch_save({"weight": self.weight.detach().float().cpu().contiguous(),
                                  "bias": self.bias.detach().float().cpu().contiguous()}, path)

    @classmethod
    def load(cls, path: str | Path) -> "LinearHead":
        """Read a head file (released DINOv2 format or one saved here); errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"linear head file '{path}' does not exist (config key 'head')")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - corrupt file, not a torch pickle
            raise DataError(f"cannot read linear head '{path}' as a torch state dict "
                            f"({type(e).__name__}: {_first_line(e)})") from None
        if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
            raise DataError(f"linear head '{path}' must hold exactly the keys 'weight' and 'bias' "
                            f"(an nn.Linear state dict, as DINOv2's released heads), got {_keys(state)}")
        try:
            return cls(state["weight"].float(), state["bias"].float())
        except DataError as e:
            raise DataError(f"linear head '{path}': {e}") from None


def _first_line(error: Exception, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
    return text if len(text) <= limit else text[:limit] + "..."


def _keys(state) -> str:
    """What a wrong head file holds, in a few words (a whole model's state dict has hundreds of keys)."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}"
    keys = [str(k) for k in state]
    shown = ", ".join(f"'{k}'" for k in keys[:4])
    return f"{len(keys)} key(s): {shown}" + (", ..." if len(keys) > 4 else "")


def check_head_width(head: LinearHead, dim: int, has_cls: bool | None = None) -> None:
    """Tokens of width ``dim`` can feed ``head``: it takes ``mean(patches)`` (``dim`` features) or
    ``concat(CLS, mean(patches))`` (2 x ``dim``; ``has_cls`` False: the tokens have no CLS token;
    None: not known yet). A ConfigError saying what the head expects otherwise."""
    if head.in_features == dim:
        return
    if head.in_features == 2 * dim:
        if has_cls is False:
            raise ConfigError(f"this head takes concat(CLS, mean(patches)) ({head.in_features} = 2 x {dim} "
                              f"features), but these tokens have no CLS token (the backbone has none): use a "
                              f"head on mean(patches) ({dim} features)")
        return
    if head.in_features == 5 * dim:
        raise ConfigError(f"this head takes {head.in_features} = 5 x {dim} features: a DINOv2 'linear4' "
                          f"head, which reads the CLS tokens of the last four blocks; an FAE reconstructs "
                          f"only the last block's tokens. Use the 1-layer head (*_linear_head.pth)")
    raise ConfigError(f"this head takes {head.in_features} features; tokens of width {dim} give {dim} "
                      f"(mean of patches) or {2 * dim} (CLS + mean of patches)")


def check_head_classes(head: LinearHead, num_classes: int, data: str) -> None:
    """The data's labels are class indices of ``head``: it scores at least ``num_classes`` classes."""
    if num_classes > head.num_classes:
        raise DataError(f"this head scores {head.num_classes} classes, but {data} has {num_classes}: "
                        f"use a head trained on this data's classes (`fae eval probe ... save_head=FILE`)")


def head_input(patches: torch.Tensor, cls: torch.Tensor | None, head: LinearHead) -> torch.Tensor:
    """The head's input for tokens ``patches`` [B, N, D] and ``cls`` [B, D] (or None).

    in_features = D -> ``mean(patches)``; 2D -> ``concat(cls, mean(patches))`` (the released DINOv2
    heads); anything else is a ConfigError saying what the head expects.
    """
    if patches.ndim != 3:
        raise DataError(f"head_input takes patch tokens [B, N, D], got {list(patches.shape)}")
    dim = patches.shape[-1]
    check_head_width(head, dim, has_cls=cls is not None)
    pooled = patches.float().mean(dim=1)  # [B, D]
    if head.in_features == dim:
        return pooled
    return torch.cat([cls.float(), pooled], dim=1)  # [B, 2D]


def patch_mean_half(features: torch.Tensor, head: LinearHead) -> torch.Tensor:
    """``concat(CLS, mean(patches))`` features [N, 2D] with the CLS half set to zero, so ``head``
    scores ``W[:, D:] @ mean(patches) + b``: the released head's patch-mean weight columns with its
    bias, the CLS contributing nothing. Not a head trained on the patch mean alone (that would do
    better); it shows how much of the head's decision the patch tokens carry by themselves."""
    if features.ndim != 2 or features.shape[1] != head.in_features or head.in_features % 2:
        raise DataError(f"patch_mean_half takes concat(CLS, mean(patches)) features [N, {head.in_features}] "
                        f"of a head with an even width, got {list(features.shape)}")
    zeroed = features.clone()
    zeroed[:, :head.in_features // 2] = 0.0  # the CLS half
    return zeroed  # [N, 2D]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows whose label is among the ``k`` largest logits (k capped at the class count)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # [N, k]
    return float((top == labels.to(top.device)[:, None]).any(dim=1).double().mean())


def head_accuracy(head: LinearHead, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top-1 / top-5 of ``head`` on features [N, F] with labels [N] (class indices of the head)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if features.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise DataError(f"head accuracy needs one label per feature row and at least one row, got "
                        f"{features.shape[0]} rows and {labels.shape[0]} labels")
    if int(labels.min()) < 0 or int(labels.max()) >= head.num_classes:
        raise DataError(f"labels must be class indices in [0, {head.num_classes}) for this head, got "
                        f"[{int(labels.min())}, {int(labels.max())}]")
    logits = head.logits(features)
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}
