"""``fae cache-latents --config FILE [key=value ...]``: encode a dataset with a trained FAE.

Runs unchanged under ``torchrun --nproc_per_node=N -m fae cache-latents ...`` (ranks split the
shards); re-running the same command resumes an interrupted cache. A captioned dataset
(``data.name: captions`` or ``webdataset``) stores its captions, and with ``text_encoder=NAME`` the
text embeddings beside the latents. The cache records the FAE
export's latent statistics; the generator trained on it normalises with them.
"""
from __future__ import annotations

import argparse

from fae import distributed as du
from fae.config import load_config
from fae.data.latent_cache import CacheConfig
from fae.preflight import Check, output_folder, require
from fae.training.latents import cache_latents
from fae.training.preflight import data_checks, fae_export_check


def config_of(args: argparse.Namespace) -> CacheConfig:
    """The validated config ``fae cache-latents`` runs with (``--print-config``)."""
    return load_config(CacheConfig, args.config, args.overrides)


def inputs(cfg: CacheConfig) -> list[Check]:
    """What the cache reads and writes, checked before the FAE or the backbone is loaded: the FAE
    export, the data of its split, and the cache folder (an existing one is resumed)."""
    return [fae_export_check(cfg.fae, "fae", "fae train autoencoder"), *data_checks(cfg.data),
            Check("latent cache folder (out)", cfg.out, lambda: output_folder(cfg.out, "config key 'out'"))]


def run(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    require(inputs(cfg))
    folder = cache_latents(cfg)
    if du.is_main():
        print(f"latent cache: {folder.resolve()}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae cache-latents` (``fae.cli`` made its parser, with the one-line help)."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", help="YAML config file (fae, out, data, flip, ...)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. fae=runs/fae/export out=runs/latents flip=true")
    parser.set_defaults(func=run, config_of=config_of)
