"""Encode a dataset into a latent cache: what ``fae cache-latents`` runs, and what the demo, the
experiments and the benchmarks call from Python.

Two sources of latents:

* an FAE export (``fae=``): its posterior means, with the export's latent statistics
  (:func:`cache_latents`);
* a backbone's raw tokens (``backbone.name=``, ``fae`` empty): tokens [N, D] stored as latents
  [D, h, w] (:class:`fae.backbones.token_space.TokenSpace`), unnormalised; the cache records their
  per-channel mean / std over ``stats_images`` evenly spaced training images (std floored by
  :func:`fae.backbones.token_space.floored_stats`), and the generator standardises with them as it
  does FAE latents. The paper's "diffusing raw 1536-d features" row (:func:`cache_tokens`).

The writer (:mod:`fae.data.latent_cache_writer`) takes any encoder; this is where the FAE export or
the backbone is loaded and joined with the token cache (tokens the stages already computed) and a
text encoder.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fae import distributed as du
from fae.autoencoder import FAE
from fae.backbones.config import BackboneConfig
from fae.backbones.token_cache import TokenCache
from fae.backbones.token_space import SpaceStats, TokenEncoder, TokenSpace, floored_stats
from fae.data.batches import iterate_batches
from fae.data.captions import CaptionedItems
from fae.data.datasets import build_dataset
from fae.data.imagefolder import evenly_spaced
from fae.data.latent_cache import CacheConfig, read_manifest
from fae.data.latent_cache_writer import write_cache
from fae.data.shard_store import MANIFEST
from fae.errors import ConfigError, LatentCacheError
from fae.stats import ChannelStats
from fae.text import load_text_encoder
from fae.text.unique import UniqueCaptionEncoder

# The manifest's ``backbone`` record of a raw-token cache is "<name> (raw tokens)": ``fae sample
# --pixel-decoder`` reads the name back to check a decoder trained on another backbone's tokens.
RAW_TOKENS_SUFFIX = " (raw tokens)"


@dataclass
class LatentsConfig(CacheConfig):
    """``fae cache-latents`` settings: :class:`~fae.data.latent_cache.CacheConfig` (the FAE's
    latents) plus the raw-token mode.

    Args:
        backbone: set ``backbone.name`` (and leave ``fae`` empty) to cache this backbone's raw
            tokens as latents [D, h, w] instead of an FAE's (``backbone.resolution`` /
            ``backbone.weights`` as in the stage configs). Unused with ``fae``.
        stats_images: raw-token mode: the training images (evenly spaced over ``data``) whose
            tokens give the per-channel mean / std the cache records and the generator
            standardises with (an FAE export brings its own).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    stats_images: int = 50_000

    @property
    def raw_tokens(self) -> bool:
        """Whether this caches a backbone's raw tokens (``backbone.name`` set)."""
        return self.backbone.name is not None

    def validate(self) -> None:
        if not self.raw_tokens:
            if self.backbone != BackboneConfig():
                raise ConfigError("config section 'backbone' is set without 'backbone.name': set "
                                  "backbone.name to cache raw tokens, or leave the section out (an FAE "
                                  "export records its backbone)")
            super().validate()
            return
        if self.fae:
            raise ConfigError(f"config keys 'fae' ('{self.fae}') and 'backbone.name' "
                              f"('{self.backbone.name}') are both set: give 'fae' to cache an FAE's "
                              f"latents, or 'backbone.name' alone to cache raw tokens")
        if self.stats_images < 1:
            raise ConfigError(f"config key 'stats_images' must be >= 1, got {self.stats_images}")
        self.backbone.validate()
        self.as_cache().validate()

    def token_source(self) -> str:
        """What the raw-token latents are (the manifest's ``fae_path``, part of the cache identity)."""
        info = self.backbone.info()
        return f"raw {info.name} tokens at {info.resolution} px (statistics of {self.stats_images} images)"

    def as_cache(self) -> CacheConfig:
        """The writer's settings for raw tokens: ``fae`` names the token source."""
        values = {f.name: getattr(self, f.name) for f in fields(CacheConfig)}
        return CacheConfig(**{**values, "fae": self.token_source()})


def fae_record(fae: FAE) -> dict[str, Any]:
    """What a cache (and a generator trained on it) records about the FAE that wrote it."""
    cfg = fae.config
    return {"identity": fae.identity(), "backbone": cfg.backbone, "resolution": cfg.resolution,
            "latent_shape": list(fae.latent_shape)}


def cache_latents(cfg: CacheConfig, captions: list[str] | None = None) -> Path:
    """Load the FAE export ``cfg.fae`` on this rank's device and write (or resume) the cache
    ``cfg.out``; returns the cache folder. The process group, if any, is the caller's.

    ``captions`` (one per item of ``cfg.data``, e.g. generated ones) make the data captioned; their
    embeddings (with ``cfg.text_encoder``) are computed once per distinct caption."""
    cfg.validate()
    device = du.device()
    fae = FAE.from_pretrained(cfg.fae, device=device)
    tokens = None
    if cfg.token_cache_dir:  # the tokens the stages cached: no second pass through the backbone
        tokens = TokenCache(cfg.token_cache_dir, fae.backbone).dataset(cfg.data, progress=cfg.progress)
    if captions is not None:
        items = tokens if tokens is not None else build_dataset(replace(cfg.data, flip=False))
        tokens = CaptionedItems(items, captions)
    text = None
    if cfg.text_encoder:
        text = load_text_encoder(cfg.text_encoder, cfg.text_weights, cfg.text_max_length, device=device)
        if captions is not None:  # a given caption list: few distinct strings, each encoded once
            text = UniqueCaptionEncoder(text)
    return write_cache(cfg, fae, identity=fae_record(fae), latent_mean=fae.latent_mean,
                       latent_std=fae.latent_std, device=device, dataset=tokens, text_encoder=text)


# ------------------------------------------------------------------------ spaces other than an FAE


@torch.inference_mode()
def measure_latent_stats(encoder, dataset: Dataset, channels: int, indices: Sequence[int], batch_size: int,
                         device: torch.device | str = "cpu", progress: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) [c] of ``encoder.encode(items)`` over ``indices`` of ``dataset``,
    std floored (:func:`~fae.backbones.token_space.floored_stats`). Under torchrun each rank encodes
    its slice of ``indices`` and every rank gets the statistics of all of them."""
    stats = ChannelStats(channels)
    mine = [indices[i] for i in du.shard_range(len(indices))]
    for items, _ in iterate_batches(dataset, batch_size, mine, progress=progress, desc="latent statistics"):
        stats.update(encoder.encode(items.to(device)).movedim(1, -1))  # [b, h, w, c]
    return floored_stats(*stats.all_reduce().mean_std())


def write_space_cache(cfg: CacheConfig, space: SpaceStats, *, label: str, resolution: int | None,
                      encoder=None, dataset: Dataset | None = None, device: torch.device | str = "cpu") -> Path:
    """Write (or resume) the latent cache of a non-FAE latent space whose statistics are set:
    ``cfg.fae`` names the source, ``label`` is the manifest's ``backbone``; ``encoder`` (default:
    the space itself) encodes the items of ``dataset`` (default: ``cfg.data``)."""
    identity = {"identity": space.identity(source=cfg.fae), "backbone": label, "resolution": resolution,
                "latent_shape": list(space.latent_shape)}
    return write_cache(cfg, space if encoder is None else encoder, identity=identity,
                       latent_mean=space.latent_mean, latent_std=space.latent_std, device=device, dataset=dataset)


def _recorded_stats(folder: str, source: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The statistics a cache started from the same token source recorded (a resume re-uses them,
    so the cache's identity stays the same), or None."""
    if not (Path(folder) / MANIFEST).is_file():
        return None
    manifest = read_manifest(folder)
    stats = manifest.get("latent_stats")
    if manifest.get("fae_path") != source or stats is None:
        return None
    return torch.tensor(stats["mean"]), torch.tensor(stats["std"])


def cache_tokens(cfg: LatentsConfig) -> Path:
    """Write (or resume) a cache of the raw tokens of ``cfg.backbone`` over ``cfg.data``: latents
    [D, h, w] = tokens [N, D] transposed, and their per-channel statistics over ``cfg.stats_images``
    evenly spaced items (measured once; a resumed cache keeps the ones it recorded). With
    ``cfg.token_cache_dir`` the tokens come from (and fill) that token cache. Returns the folder."""
    cfg.validate()
    if not cfg.raw_tokens:
        raise ConfigError("config key 'backbone.name' is not set: cache_tokens writes raw backbone tokens")
    cache, device = cfg.as_cache(), du.device()
    backbone = cfg.backbone.load(device)
    space = TokenSpace(backbone.grid, backbone.dim).to(device)
    if cfg.token_cache_dir:  # items are tokens [N, D], which the space encodes itself
        dataset, encoder = TokenCache(cfg.token_cache_dir, backbone).dataset(cfg.data, progress=cfg.progress), space
    else:
        dataset, encoder = build_dataset(replace(cfg.data, flip=False)), TokenEncoder(space, backbone)
    recorded = du.on_main(lambda: _recorded_stats(cfg.out, cache.fae), LatentCacheError, LatentCacheError)
    if recorded is None:
        recorded = measure_latent_stats(encoder, dataset, space.dim, evenly_spaced(len(dataset), cfg.stats_images),
                                        cfg.batch_size, device, progress=cfg.progress and du.is_main())
    space.set_latent_stats(*recorded)
    return write_space_cache(cache, space, label=f"{backbone.info.name}{RAW_TOKENS_SUFFIX}",
                             resolution=backbone.resolution, encoder=encoder, dataset=dataset, device=device)
