"""``fae cache-latents --config FILE [key=value ...]``: encode a dataset with a trained FAE, or
(``backbone.name=NAME``, no ``fae``) store a backbone's raw tokens as latents [D, h, w] with their
per-channel statistics over ``stats_images`` images (the paper's raw-feature generator:
``imagenet256/sit_xl1_dinov2_tokens.yaml``).

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
from fae.preflight import Check, output_folder, require
from fae.training.latents import LatentsConfig, cache_latents, cache_tokens
from fae.training.preflight import backbone_check, data_checks, fae_export_check


def config_of(args: argparse.Namespace) -> LatentsConfig:
    """The validated config ``fae cache-latents`` runs with (``--print-config``)."""
    return load_config(LatentsConfig, args.config, args.overrides)


def inputs(cfg: LatentsConfig) -> list[Check]:
    """What the cache reads and writes, checked before the FAE or the backbone is loaded: the FAE
    export (raw tokens: the backbone's weights), the data of its split, and the cache folder (an
    existing one is resumed)."""
    source = backbone_check(cfg.backbone) if cfg.raw_tokens else fae_export_check(cfg.fae, "fae", "fae train autoencoder")
    return [source, *data_checks(cfg.data),
            Check("latent cache folder (out)", cfg.out, lambda: output_folder(cfg.out, "config key 'out'"))]


def run(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    require(inputs(cfg))
    folder = cache_tokens(cfg) if cfg.raw_tokens else cache_latents(cfg)
    if du.is_main():
        print(f"latent cache: {folder.resolve()}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae cache-latents` (``fae.cli`` made its parser, with the one-line help)."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", help="YAML config file (fae or backbone, out, data, flip, ...)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. fae=runs/fae/export out=runs/latents flip=true, or "
                             "backbone.name=dinov2-g14 out=runs/tokens (raw tokens)")
    parser.set_defaults(func=run, config_of=config_of)
