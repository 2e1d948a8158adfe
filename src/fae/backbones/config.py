"""The one spelling of "which frozen backbone": the ``backbone:`` section of every run config.

Stage Ia (``fae train autoencoder``) and stage Ib (``fae train pixel-decoder stage=noisy-features``)
read it; stage II reads the backbone from the FAE export it fine-tunes on (the FAE records the
backbone it was trained on, see ``fae.autoencoder.model``), so there the section may be left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fae.backbones.base import Backbone, BackboneInfo
from fae.backbones.registry import check_weights, fetch_weights_command, get_info, load_backbone
from fae.errors import ConfigError


PAPER_BACKBONE = "dinov2-g14"  # the paper's main results: DINOv2-g/14 without registers, 224 px


@dataclass
class BackboneConfig:
    """A registry backbone at an input size, with an optional weights location.

    Args:
        name: registry name (``fae backbones`` lists them); the demo configs use
            ``efficientnet-lite0`` (offline weights), the paper configs ``dinov2-g14``. null only in
            stage II: the backbone the FAE export records.
        resolution: square input size in pixels; null = the registry's default (stage II: the
            FAE's). The token grid follows (EfficientNet-Lite0 at 128 px: 4x4).
        weights: local folder / file or hub id of the weights; null = the registry lookup
            (``$FAE_WEIGHTS_<NAME>``, ``$FAE_WEIGHTS_DIR/<name>``, the packaged file or hub id).
    """

    name: str | None = None
    resolution: int | None = None
    weights: str | None = None

    def validate(self) -> None:
        if self.resolution is not None and self.resolution <= 0:
            raise ConfigError(f"config key 'backbone.resolution' must be positive or null, got {self.resolution}")

    def _name(self) -> str:
        if self.name is None:
            raise ConfigError("config key 'backbone.name' is not set (`fae backbones` lists the names)")
        return self.name

    def info(self) -> BackboneInfo:
        """Name, width, grid and resolution from the registry (no weights needed: ``--dry-run``)."""
        return get_info(self._name(), self.resolution)

    def load(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Backbone:
        """The frozen backbone on ``device`` (tokens are float32 whatever ``dtype`` the weights use)."""
        return load_backbone(self._name(), weights=self.weights, device=device, dtype=dtype,
                             resolution=self.resolution)

    def check_weights(self) -> str:
        """Where :meth:`load` would read the weights, checked without loading them (a check before
        compute); a WeightsNotFoundError saying how to supply them otherwise."""
        return check_weights(self._name(), self.weights, self.resolution)

    def fetch_command(self) -> str:
        """The command that fetches the published weights into a local folder ("" when none is needed)."""
        return fetch_weights_command(self._name())

    def describe(self) -> str:
        info = self.info()
        return (f"{info.name} at {info.resolution} px -> tokens {info.grid[0]}x{info.grid[1]}x{info.dim}"
                + (f" (weights {self.weights})" if self.weights else ""))
