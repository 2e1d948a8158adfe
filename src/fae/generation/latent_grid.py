"""What every generator config shares: the latent shape it is built for and its patch grid.

The diffusion (``model:``), flow (``flow:``) and MMDiT (``mmdit:``) configs inherit this mixin;
``SECTION`` is the config section their error messages name. Each subclass is a dataclass with the
fields ``latent_channels``, ``latent_size`` (null = from upstream) and ``patch_size``.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from fae.errors import ConfigError


class LatentGrid:
    SECTION: ClassVar[str] = "model"
    latent_channels: int | None
    latent_size: int | None
    patch_size: int

    def with_latent_shape(self, shape: tuple[int, int, int], source: str):
        """A copy whose latent shape is ``shape`` = (c, h, w) as made upstream (``source`` names it
        in errors); explicit values must agree with it."""
        c, h, w = (int(v) for v in shape)
        section = self.SECTION
        if h != w:
            raise ConfigError(f"{source} makes latents {[c, h, w]} on a non-square grid; the generator "
                              f"needs h = w ({section}.latent_size)")
        for key, value in (("latent_channels", c), ("latent_size", h)):
            given = getattr(self, key)
            if given is not None and given != value:
                raise ConfigError(f"config key '{section}.{key}' is {given}, but {source} makes latents "
                                  f"{[c, h, w]} ({key} = {value}); leave it null to use {value}")
        return dataclasses.replace(self, latent_channels=c, latent_size=h)

    def check_at_least(self, keys: tuple[str, ...], minimum: int) -> None:
        """Each set (non-null) field in ``keys`` is >= ``minimum``."""
        for key in keys:
            value = getattr(self, key)
            if value is not None and value < minimum:
                raise ConfigError(f"config key '{self.SECTION}.{key}' must be >= {minimum}, got {value}")

    def check_patch(self) -> None:
        """Patch 1 or 2, dividing the latent side."""
        section = self.SECTION
        if self.patch_size not in (1, 2):
            raise ConfigError(f"config key '{section}.patch_size' must be 1 or 2, got {self.patch_size}")
        if self.latent_size is not None and self.latent_size % self.patch_size:
            raise ConfigError(f"config key '{section}.latent_size' ({self.latent_size}) must be divisible "
                              f"by {section}.patch_size ({self.patch_size})")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid after patchifying."""
        side = self.latent_size // self.patch_size
        return side, side

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """[c, h, w] of one latent."""
        return self.latent_channels, self.latent_size, self.latent_size
