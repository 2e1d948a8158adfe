"""The contract every frozen backbone adapter fulfils.

A backbone maps images to patch tokens ``[B, N, D]`` on a ``grid = (h, w)`` with ``N = h * w``.
It owns its preprocessing: it accepts uint8 ([0, 255]) or float ([0, 1]) images ``[B, C, H, W]``
of any size, C in {1, 3} (grayscale is repeated to RGB), and resizes / crops / normalises them as
the pretrained model expects. It is frozen: eval mode, no gradients.

Extra tokens (opt-in): ``backbone(images)`` returns the patch tokens only, as every caller expects;
``backbone.forward_all(images)`` returns a :class:`BackboneOutput` with the patches *and* the
tokens ViTs keep beside them: DINOv2's CLS token and, for the register variants, its register
tokens (all after the final LayerNorm, the ``x_norm_clstoken`` / ``x_norm_regtokens`` of the DINOv2
code). Backbones without such tokens (EfficientNet, SigLIP, the tiny ViT) return ``cls=None`` and
``registers=None``; ``info.prefix_tokens`` says how many a backbone has (CLS + registers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from fae.backbones.preprocess import preprocess_images
from fae.nn.frozen import FrozenModule


@dataclass(frozen=True)
class BackboneInfo:
    """What a registry entry knows without loading weights (enough for ``--dry-run``)."""

    name: str
    dim: int  # token width D
    grid: tuple[int, int]  # token grid (h, w) at ``resolution``
    resolution: int  # square input size in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # hub id or package the weights come from
    description: str = ""
    family: str = ""  # adapter family: "efficientnet", "dinov2", "siglip", "siglip2", "tiny-vit"
    patch_size: int = 0  # pixels per token side (the network's total stride)
    interpolation: str = "bicubic"  # resize mode the model's own image processor uses
    prefix_tokens: int = 0  # tokens beside the patches: CLS + registers (DINOv2: 1, with registers 5)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


class BackboneOutput(NamedTuple):
    """Everything a backbone returns for a batch (float32): ``patches`` [B, N, D] in row-major grid
    order; ``cls`` [B, D] or None; ``registers`` [B, R, D] or None."""

    patches: torch.Tensor
    cls: torch.Tensor | None = None
    registers: torch.Tensor | None = None

    def extra(self) -> torch.Tensor | None:
        """CLS then registers as one tensor [B, P, D] (None when the backbone has neither)."""
        parts = ([self.cls[:, None]] if self.cls is not None else []) + \
                ([self.registers] if self.registers is not None else [])
        return torch.cat(parts, dim=1) if parts else None

    @staticmethod
    def from_extra(patches: torch.Tensor, extra: torch.Tensor | None) -> "BackboneOutput":
        """The inverse of :meth:`extra`: [B, P, D] -> CLS (the first) and registers (the rest)."""
        if extra is None or extra.shape[1] == 0:
            return BackboneOutput(patches)
        return BackboneOutput(patches, extra[:, 0], extra[:, 1:] if extra.shape[1] > 1 else None)


class Backbone(FrozenModule):  # never trained in FAE: freeze() / train() from fae.nn.frozen
    """Base class: subclasses set ``info`` and implement ``forward_features(pixels) -> tokens``.

    ``preprocess`` (shared) turns user images into normalised model input; subclasses only
    override it when their model needs a special layout (SigLIP2 NaFlex patches).
    """

    info: BackboneInfo

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def grid(self) -> tuple[int, int]:
        return self.info.grid

    @property
    def resolution(self) -> int:
        return self.info.resolution

    @property
    def device(self) -> torch.device:
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def compute_dtype(self) -> torch.dtype:
        param = next(self.parameters(), None)
        return param.dtype if param is not None else torch.float32

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] uint8/float -> normalised pixels [B, 3, S, S] on the model's device."""
        info = self.info
        return preprocess_images(images, info.resolution, info.mean, info.std, info.interpolation,
                                 device=self.device, dtype=self.compute_dtype)

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_tokens(self, pixels: torch.Tensor) -> BackboneOutput:
        """Normalised pixels -> :class:`BackboneOutput`; adapters with CLS/registers override it."""
        return BackboneOutput(self.forward_features(pixels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] (uint8 or float in [0, 1]) -> tokens [B, N, D] (float32)."""
        with torch.inference_mode():
            tokens = self.forward_features(self.preprocess(images)).float()  # [B, N, D]
        return _usable(tokens)

    def forward_all(self, images: torch.Tensor) -> BackboneOutput:
        """images [B, C, H, W] -> patches [B, N, D] with CLS [B, D] and registers [B, R, D] (or None)."""
        with torch.inference_mode():
            out = self.forward_tokens(self.preprocess(images))
        return BackboneOutput(*(_usable(t.float()) if t is not None else None for t in out))


def _usable(tokens: torch.Tensor) -> torch.Tensor:
    """Inference tensors cannot be saved for backward; a trainable encoder consumes these."""
    return tokens if torch.is_inference_mode_enabled() else tokens.clone()
