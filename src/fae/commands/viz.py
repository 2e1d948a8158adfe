"""``fae viz patches``: patch-level maps of an exported FAE's latents beside its backbone's tokens.

    fae viz patches --fae runs/demo/pixel_decoder_ii/export --images 0,1,2,3 --out patches.png
    fae viz patches --fae EXPORT --images photos/ data.image_size=224 [--config FILE] [key=value ...]

``--images`` is either comma-separated indices into ``data`` (default: the Fashion-MNIST test
split) or an image folder (every image below it, unlabelled; then ``indices`` picks among them,
default the first 8). The FAE export names its backbone, which is loaded from the registry (local
weights: the usual ``FAE_WEIGHTS_*`` settings). Writes the figure (``out``, PNG) and the numbers
beside it (``out`` with ``.json``): the map correlation and the flip / shift / same-class
agreements on tokens and on latents, each with its chance level (the protocol is
``fae.evaluation.patch_maps``'s docstring). ``run_patches(cfg)`` is the same from Python.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fae.autoencoder import FAE
from fae.commands.eval import resolve_device
from fae.config import load_config
from fae.data.batches import stack_images
from fae.data.datasets import DataConfig, build_dataset, check_batchable
from fae.data.fashion_mnist import CLASS_NAMES
from fae.errors import ConfigError, DataError
from fae.evaluation.patch_figures import patch_figure
from fae.evaluation.patch_study import PatchesConfig, patch_study
from fae.images import save_png
from fae.io import atomic_save_json

DEFAULT_FOLDER_IMAGES = 8


def load_images(data: DataConfig, indices: list[int] | None):
    """(uint8 images [n, C, H, W], labels [n], the indices used) of ``data``; an index outside the
    dataset is a DataError naming it."""
    dataset = build_dataset(data)
    where = f"{data.name}:{data.root or data.split}"
    indices = list(range(min(DEFAULT_FOLDER_IMAGES, len(dataset)))) if indices is None else list(indices)
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if bad:
        raise DataError(f"image index {bad[0]} is out of range: {where} holds {len(dataset)} images "
                        f"(indices 0..{len(dataset) - 1})")
    if len(indices) < 2:
        raise DataError(f"the patch maps need at least 2 images; {where} holds {len(dataset)}")
    check_batchable(dataset)
    items = [dataset[i] for i in indices]
    labels = torch.tensor([int(label) for _, label, *_ in items], dtype=torch.long)
    return stack_images([image for image, *_ in items]), labels, indices


def run_patches(cfg: PatchesConfig) -> dict[str, Any]:
    """Draw the patch maps of ``cfg.indices`` and write the PNG + JSON; returns the numbers."""
    fae = FAE.from_pretrained(cfg.fae, device=resolve_device(cfg.device))
    images, labels, indices = load_images(cfg.data, cfg.indices)
    labelled = bool((labels >= 0).all())
    settings = replace(cfg.patches, rows=min(cfg.patches.rows, len(images)))
    summary, data = patch_study(fae, images, settings, labels=labels if labelled else None)
    names = [CLASS_NAMES[int(c)] if cfg.data.name == "fashion-mnist" else "" for c in labels[:settings.rows]]
    row_labels = [f"#{i} {n}".strip() for i, n in zip(indices, names)]
    png = save_png(patch_figure(data, row_labels), cfg.out)
    results = {**summary, "fae": str(cfg.fae), "data": f"{cfg.data.name}:{cfg.data.root or cfg.data.split}",
               "indices": indices, "png": str(png)}
    out = atomic_save_json(json.loads(json.dumps(results, default=float)), Path(cfg.out).with_suffix(".json"))
    return {**results, "out": str(out)}


def _images_overrides(text: str | None) -> list[str]:
    """``--images``: comma-separated indices, or an image folder."""
    if text is None:
        return []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and all(p.lstrip("-").isdigit() for p in parts):
        return [f"indices={json.dumps([int(p) for p in parts])}"]
    if Path(text).is_dir():
        return ["data.name=folder", f"data.root={json.dumps(text)}"]
    raise ConfigError(f"--images '{text}' is neither comma-separated image indices nor an image folder")


def config_of(args: argparse.Namespace) -> PatchesConfig:
    """The config ``fae viz patches`` runs with: file, overrides, then flags (``--print-config``)."""
    flags = [f"{key}={json.dumps(value)}" for key, value in (("fae", args.fae), ("out", args.out)) if value]
    return load_config(PatchesConfig, args.config, list(args.overrides) + _images_overrides(args.images) + flags)


def run(args: argparse.Namespace) -> int:
    results = run_patches(config_of(args))
    print(json.dumps(results, default=float))
    print(f"fae viz patches: map correlation {results['map_correlation']:.3f}; flip agreement tokens "
          f"{results['flip_tokens']:.3f} / latents {results['flip_latents']:.3f} (chance {results['flip_chance']:.3f})")
    print(f"fae viz patches: wrote {results['png']} and {results['out']}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae viz` (``fae.cli`` made its parser, with the one-line help)."""
    verbs = parser.add_subparsers(dest="viz_verb", metavar="VIZ_VERB", required=True)
    p = verbs.add_parser("patches", help="cosine maps and cross-image patch matches, backbone tokens vs "
                         "FAE latents, with their summary numbers", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with PatchesConfig keys")
    p.add_argument("--fae", help="exported FAE folder")
    p.add_argument("--images", help="comma-separated indices into data (default Fashion-MNIST test), or an image folder")
    p.add_argument("--out", help="PNG to write (the JSON goes beside it)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. patches.clusters=3")
    p.set_defaults(func=run, config_of=config_of)
