"""Encode a dataset with a trained FAE into a latent cache: what ``fae cache-latents`` runs, and what
the demo, the experiments and the benchmarks call from Python.

The writer (:mod:`fae.data.latent_cache_writer`) takes any encoder; this is where the FAE export is
loaded and joined with the token cache (tokens the stages already computed) and a text encoder.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fae import distributed as du
from fae.autoencoder import FAE
from fae.backbones.token_cache import TokenCache
from fae.data.captions import CaptionedItems
from fae.data.datasets import build_dataset
from fae.data.latent_cache import CacheConfig
from fae.data.latent_cache_writer import write_cache
from fae.text import load_text_encoder
from fae.text.unique import UniqueCaptionEncoder


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
