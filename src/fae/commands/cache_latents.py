"""``fae cache-latents --config FILE [key=value ...]``: encode a dataset with a trained FAE.

Runs unchanged under ``torchrun --nproc_per_node=N -m fae cache-latents ...`` (ranks split the
shards); re-running the same command resumes an interrupted cache. A captioned dataset
(``data.name: captions`` or ``webdataset``) stores its captions, and with ``text_encoder=NAME`` the
text embeddings beside the latents. The cache records the FAE
export's latent statistics; the generator trained on it normalises with them.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fae.data.latent_cache import CacheConfig


def fae_record(fae) -> dict[str, Any]:
    """What a cache (and a generator trained on it) records about the FAE that wrote it."""
    cfg = fae.config
    return {"identity": fae.identity(), "backbone": cfg.backbone, "resolution": cfg.resolution,
            "latent_shape": list(fae.latent_shape)}


def cache_latents(cfg: CacheConfig, captions: list[str] | None = None) -> Path:
    """Load the FAE export ``cfg.fae`` on this rank's device and write (or resume) the cache
    ``cfg.out``; returns the cache folder. The process group, if any, is the caller's.

    ``captions`` (one per item of ``cfg.data``, e.g. generated ones) make the data captioned; their
    embeddings (with ``cfg.text_encoder``) are computed once per distinct caption."""
    from fae import distributed as du
    from fae.autoencoder import FAE
    from fae.data.latent_cache import write_cache

    cfg.validate()
    device = du.device()
    fae = FAE.from_pretrained(cfg.fae, device=device)
    tokens = None
    if cfg.token_cache_dir:  # the tokens the stages cached: no second pass through the backbone
        from fae.backbones.token_cache import TokenCache

        tokens = TokenCache(cfg.token_cache_dir, fae.backbone).dataset(cfg.data, progress=cfg.progress)
    if captions is not None:
        from dataclasses import replace

        from fae.data.captions import CaptionedItems
        from fae.data.datasets import build_dataset

        items = tokens if tokens is not None else build_dataset(replace(cfg.data, flip=False))
        tokens = CaptionedItems(items, captions)
    text = None
    if cfg.text_encoder:
        from fae.text import load_text_encoder

        text = load_text_encoder(cfg.text_encoder, cfg.text_weights, cfg.text_max_length, device=device)
        if captions is not None:  # a given caption list: few distinct strings, each encoded once
            from fae.text.unique import UniqueCaptionEncoder

            text = UniqueCaptionEncoder(text)
    return write_cache(cfg, fae, identity=fae_record(fae), latent_mean=fae.latent_mean,
                       latent_std=fae.latent_std, device=device, dataset=tokens, text_encoder=text)


def run(args: argparse.Namespace) -> int:
    from fae import distributed as du
    from fae.config import load_config
    from fae.data.latent_cache import CacheConfig

    cfg = load_config(CacheConfig, args.config, args.overrides)
    folder = cache_latents(cfg)
    if du.is_main():
        print(f"latent cache: {folder.resolve()}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("cache-latents", help="encode a dataset with a trained FAE into a "
                                   "latent cache", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (fae, out, data, flip, ...)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. fae=runs/fae/export out=runs/latents flip=true")
    parser.set_defaults(func=run)
