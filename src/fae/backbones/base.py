"""The contract every frozen backbone adapter fulfils.

A backbone maps images to patch tokens ``[B, N, D]`` on a ``grid = (h, w)`` with ``N = h * w``.
It owns its preprocessing: it accepts uint8 ([0, 255]) or float ([0, 1]) images ``[B, C, H, W]``
of any size, C in {1, 3} (grayscale is repeated to RGB), and resizes / crops / normalises them as
the pretrained model expects. It is frozen: eval mode, no gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] (uint8 or float in [0, 1]) -> tokens [B, N, D] (float32)."""
        with torch.inference_mode():
            tokens = self.forward_features(self.preprocess(images)).float()  # [B, N, D]
        if not torch.is_inference_mode_enabled():
            # Inference tensors cannot be saved for backward; a trainable encoder consumes these.
            tokens = tokens.clone()
        return tokens
