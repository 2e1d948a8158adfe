"""Latents to images: sample a trained generator and decode with its FAE (``fae sample``).

    fae sample --generator runs/gen/export --fae runs/fae/export --num 50000 --out samples.npz \
        [--classes 0,1,2] [--seed 0] [--batch-size 64] [--config FILE] [sampling.cfg_scale=1.5 ...]

    fae sample --generator runs/t2i/export --fae runs/fae/export --prompts prompts.txt --num 1000

    fae sample --generator runs/tokens_gen/export --pixel-decoder runs/pixel_decoder_ib/export --num 50000

The last form is for a generator trained on a backbone's raw tokens (``fae cache-latents
backbone.name=...``): it samples tokens as latents [D, h, w], un-standardised with the cache's
statistics its export records, and the stage-Ib pixel decoder of that backbone paints them (the
decoder's token width and grid must be the generator's latent shape, and the backbone its run
folder records the one the cache names).

Writes an ADM-format ``.npz`` (``arr_0``: uint8 [N, H, W, 3]; ``arr_1``: int64 labels [N]) and a PNG grid
of the first samples beside it; ``--png DIR`` also writes every sample as ``DIR/000000.png``, ...
(``labels.csv`` beside them for a class-conditional generator, ``prompts.csv`` for a text-to-image
one), a folder ``fae eval fid`` scores as it scores the ``.npz``. Every input and output place is
checked before a model is built. Sample i has class ``classes[i % len(classes)]`` (equal counts per
class when len(classes) divides N) and its own noise seeded by (seed, i); for a text-to-image
generator, sample i has the prompt ``prompts[i % len(prompts)]`` (``--prompts FILE``: one prompt a
line, blank lines skipped; ``--num`` defaults to one sample per prompt) and the ``.npz`` stores them
as ``prompts`` (labels -1), so the result does not
depend on the batch size or the number of ranks. Under torchrun each rank samples a contiguous
slice and rank 0 assembles the file; there, pass settings as ``key=value`` (``num=50000``):
torchrun's own parser mistakes ``--num`` for its ``--numa-binding``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from fae import distributed as du
from fae.autoencoder import FAE
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.backbones.registry import get_info
from fae.config import load_config, yaml_load
from fae.errors import ConfigError, LatentCacheError
from fae.evaluation.stats import read_sample_batch, write_sample_batch
from fae.export import read_export_config, resolve_folder
from fae.generation import load_generator
from fae.generation.decode import (SampleDecoder, check_pair, check_sampler_overrides, class_labels, decoder_folder,
                                   sampler_config, token_decoder)
from fae.images import image_grid, nchw_to_nhwc, nhwc_to_nchw, save_png, to_uint8_rgb
from fae.io import atomic_write
from fae.preflight import output_file, output_folder
from fae.training.latents import RAW_TOKENS_SUFFIX


@dataclass
class SampleConfig:
    """``fae sample`` settings (command-line flags override the file).

    Args:
        generator: exported generator folder (``fae train generator`` writes ``run_dir/export``;
            its weights are the EMA weights), diffusion or flow (STARFlow): the export says which.
        fae: exported FAE folder with a pixel decoder; must be the FAE the generator was trained for.
        pixel_decoder: instead of ``fae``, for a generator trained on a backbone's raw tokens: the
            exported stage-Ib pixel decoder of that backbone (``fae train pixel-decoder`` with
            ``stage: noisy-features`` writes ``run_dir/export``).
        num: number of samples N.
        classes: classes to cycle through (default: all of the generator's classes).
        seed: base seed (sample i uses a generator seeded from (seed, i)).
        batch_size: samples per forward pass on each rank.
        out: the ``.npz`` file to write.
        grid: PNG grid path (default: ``out`` with ``.png``); grid_count samples are shown.
        grid_count: how many samples the grid shows.
        sampling: overrides of the generator's stored sampler settings (keys of ``SamplerConfig``
            for a diffusion generator, of ``FlowSamplerConfig`` for a flow: cfg_scale, denoise).
        precision: "fp32" (default) or "bf16" autocast for the generator and decoder on CUDA
            (users of peer systems saw bf16 sampling shift FID: compare like with like).
        prompts: text file of prompts, one a line (text-to-image generators only).
        png: a folder to write every sample to as a PNG as well (``000000.png``, ...: sample i is
            file i; ``labels.csv`` / ``prompts.csv`` name each file's class / prompt); it must be
            new or empty, so no earlier sample is mixed in. The ``.npz`` is written too.
    """

    generator: str = ""
    fae: str = ""
    pixel_decoder: str = ""
    num: int = 50000
    classes: list[int] | None = None
    seed: int = 0
    batch_size: int = 64
    out: str = "samples.npz"
    grid: str | None = None
    grid_count: int = 64
    sampling: dict[str, Any] = field(default_factory=dict)
    precision: Literal["fp32", "bf16"] = "fp32"
    prompts: str | None = None
    png: str | None = None

    def validate(self) -> None:
        check_sampler_overrides(self.sampling, "sampling")

    def check(self) -> None:
        """Called when sampling starts (flags may fill the required folders after loading)."""
        if not self.generator:
            raise ConfigError("config key 'generator' is required (or pass --generator DIR)")
        if not self.fae and not self.pixel_decoder:
            raise ConfigError("config key 'fae' is required (or pass --fae DIR; --pixel-decoder DIR for a "
                              "generator trained on raw backbone tokens)")
        if self.fae and self.pixel_decoder:
            raise ConfigError(f"config keys 'fae' ('{self.fae}') and 'pixel_decoder' ('{self.pixel_decoder}') "
                              f"are both set: pass --fae for a generator on FAE latents, --pixel-decoder for "
                              f"one on raw backbone tokens")
        if self.num < 1 or self.batch_size < 1:
            raise ConfigError(f"config keys 'num' and 'batch_size' must be >= 1, got {self.num} / "
                              f"{self.batch_size}")


def check_inputs(cfg: SampleConfig) -> None:
    """Every file ``fae sample`` reads and every place it writes, checked before a model is built
    (reading config files only): the generator export, an FAE export with a pixel decoder (or a
    stage-Ib pixel decoder of the generator's backbone), the prompts file, and the ``.npz``, grid
    and PNG folder places."""
    if cfg.pixel_decoder:
        check_token_exports(cfg.generator, cfg.pixel_decoder)
    else:
        check_exports(cfg.generator, cfg.fae)
    if cfg.prompts is not None:
        read_prompt_file(cfg.prompts)
    output_file(cfg.out, "--out")
    output_file(grid_path(cfg), "--grid")
    if cfg.png:
        output_folder(cfg.png, "--png", empty=True)


def check_exports(generator: str, fae: str) -> None:
    """The two exports sampling needs, from their ``config.json`` files: a generator (its kind is
    checked when it loads) and an FAE with a pixel decoder."""
    read_export_config(generator)
    FAE.check_export(fae, pixel_decoder=True)


def check_token_exports(generator: str, pixel_decoder: str) -> None:
    """A generator and a stage-Ib pixel decoder export, from their config files. When the
    generator's cache names the backbone of its raw tokens and the decoder's run folder names the
    backbone it was trained on, they must be the same backbone at the same resolution: two backbones
    can share a token shape (DINOv2 with and without registers), which the loaded models' check
    (:func:`fae.generation.decode.token_decoder`) cannot tell apart."""
    record = read_export_config(generator).get("fae") or {}  # what the generator's latent cache recorded
    label = str(record.get("backbone", ""))
    read_export_config(pixel_decoder, PixelDecoder.export_format)
    trained_on = decoder_backbone(pixel_decoder)
    if trained_on is None or not label.endswith(RAW_TOKENS_SUFFIX):
        return  # a standalone decoder export, or latents that name no backbone: the shape check decides
    name, resolution = label.removesuffix(RAW_TOKENS_SUFFIX), record.get("resolution")
    if name != trained_on[0] or (None not in (resolution, trained_on[1]) and resolution != trained_on[1]):
        raise LatentCacheError(f"generator '{generator}' was trained on raw {name} tokens at {resolution} px, "
                               f"but pixel decoder '{pixel_decoder}' on {trained_on[0]} tokens at {trained_on[1]} "
                               f"px; use the stage-Ib decoder of {name}")


def decoder_backbone(pixel_decoder: str) -> tuple[str, int | None] | None:
    """(name, resolution) of the backbone the stage-Ib run that exported ``pixel_decoder`` trained
    on, from the run folder's ``config.yaml`` beside ``export/`` (a resolution left null is the
    registry's default; None when unknown); None for an export that stands alone (its own
    ``config.json`` records only the token width and grid)."""
    path = resolve_folder(pixel_decoder).parent / "config.yaml"
    if not path.is_file():
        return None
    section = (yaml_load(path.read_text(encoding="utf-8")) or {}).get("backbone") or {}
    if not section.get("name"):
        return None
    resolution = section.get("resolution")
    if resolution is None:
        try:
            resolution = get_info(section["name"]).resolution
        except ConfigError:  # a generic Hugging Face name: its size comes from the weights it loads
            resolution = None
    return str(section["name"]), resolution


def grid_path(cfg: SampleConfig) -> Path:
    """Where the PNG grid goes: ``grid``, else ``out`` with ``.png``."""
    return Path(cfg.grid) if cfg.grid else Path(cfg.out).with_suffix(".png")


def sample_to_npz(cfg: SampleConfig) -> Path:
    """Run ``fae sample`` from a config; returns the ``.npz`` path (on every rank). Each rank draws
    its contiguous slice of the sample indices (and writes their PNGs with ``png``); rank 0
    assembles the file and the grid."""
    cfg.check()
    check_inputs(cfg)
    du.barrier()  # every rank has checked the PNG folder empty before any rank writes there
    device = du.device()
    generator = load_generator(cfg.generator, device=device)  # diffusion or flow, as the export says
    sampling = sampler_config(generator, cfg.sampling)
    painter = load_decoder(cfg, generator, sampling, device)
    prompts = cycled_prompts(generator, cfg)
    indices = du.shard_range(cfg.num)
    labels = None if prompts is not None else class_labels(generator, indices, cfg.classes)
    decoder = SampleDecoder(generator, painter, sampling, cfg.batch_size)
    bf16 = cfg.precision == "bf16" and device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        samples = decoder.all(indices, labels, seed=cfg.seed, progress=du.is_main(), desc="sample",
                              prompts=None if prompts is None else [prompts[i] for i in indices])
    out = Path(cfg.out)
    local = _adm_arrays(samples)  # this rank's (uint8 NHWC images, labels), converted once
    if cfg.png:
        write_png_folder(Path(cfg.png), indices, local[0], cfg.num)
    if du.world_size() > 1:
        write_sample_batch(_part_path(out, du.rank()), *local)
    du.barrier()
    if du.is_main():
        images, labels = _merge_parts(out, du.world_size()) if du.world_size() > 1 else local
        write_sample_batch(out, images, labels, prompts)
        _write_grid(images[:cfg.grid_count], grid_path(cfg))
        if cfg.png:
            write_png_index(Path(cfg.png), labels, prompts, cfg.num)
    du.barrier()
    return out


def load_decoder(cfg: SampleConfig, generator, sampling, device: torch.device) -> torch.nn.Module:
    """What paints the samples (``decode(z) -> images in [0, 1]``): with ``pixel_decoder``, the
    stage-Ib decoder on the generator's raw-token latents; else the FAE export (a flow sampler's
    ``finetuned_decoder`` in its place when set). Either is checked to fit the generator."""
    if cfg.pixel_decoder:
        if getattr(sampling, "finetuned_decoder", None):
            raise ConfigError("sampling.finetuned_decoder names an FAE export: it cannot decode beside "
                              "--pixel-decoder; leave it out")
        pixel_decoder = PixelDecoder.from_pretrained(cfg.pixel_decoder, device=device)
        return token_decoder(pixel_decoder, generator.config.latent_shape, generator.latent_mean,
                             generator.latent_std, cfg.generator, cfg.pixel_decoder)
    decoder_path = decoder_folder(sampling, cfg.fae)  # a flow's finetuned_decoder replaces --fae
    fae = FAE.from_pretrained(decoder_path, device=device)
    check_pair(generator, fae.identity(), fae.latent_shape, cfg.generator, decoder_path)
    return fae


def png_name(index: int, num: int) -> str:
    """File name of sample ``index`` of ``num``: zero-padded to 6 digits (more when ``num`` needs
    them), so the name order is the sample order."""
    return f"{index:0{max(6, len(str(num - 1)))}d}.png"


def write_png_folder(folder: Path, indices: range, images: np.ndarray, num: int) -> None:
    """This rank's samples (uint8 NHWC, sample ``indices``) as ``folder/<index>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in zip(indices, images):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / png_name(index, num))


def write_png_index(folder: Path, labels: np.ndarray, prompts: list[str] | None, num: int) -> Path | None:
    """``labels.csv`` (file, label) for class-conditional samples, ``prompts.csv`` (file, prompt)
    for text-to-image ones; nothing for unconditional samples (labels -1)."""
    if prompts is not None:
        column, values, name = "prompt", prompts, "prompts.csv"
    elif len(labels) and labels.min() >= 0:
        column, values, name = "label", [int(v) for v in labels], "labels.csv"
    else:
        return None
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", column])
    writer.writerows([png_name(i, num), value] for i, value in enumerate(values))
    return atomic_write(folder / name, lambda f: f.write(text.getvalue()), mode="w")


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts of a text file, one a line (blank lines skipped); an empty file is a ConfigError."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"prompts file '{path}' does not exist (config key 'prompts')")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts file '{path}' holds no prompts")
    return prompts


def cycled_prompts(generator, cfg: SampleConfig) -> list[str] | None:
    """The prompt of every sample index 0..num-1 (``prompts[i % P]``), or None for a class-conditional
    or unconditional generator; prompts and generator kinds must match."""
    text_kind = getattr(generator, "export_format", "") == "fae-t2i-generator"
    if cfg.prompts is None:
        if text_kind:
            raise ConfigError("this generator is text-to-image: pass --prompts FILE (one prompt a line)")
        return None
    if not text_kind:
        raise ConfigError("--prompts needs a text-to-image generator (`fae train generator` with kind: mmdit)")
    if cfg.classes:
        raise ConfigError("pass --prompts or --classes, not both")
    prompts = read_prompt_file(cfg.prompts)
    return [prompts[i % len(prompts)] for i in range(cfg.num)]


def _adm_arrays(samples):
    """SampleBatch -> (uint8 RGB [N, H, W, 3], int64 labels [N]): the ADM ``.npz`` layout."""
    labels = samples.labels.numpy().astype(np.int64)
    if len(samples) == 0:  # a rank with no samples (more ranks than samples)
        return np.zeros((0, 1, 1, 3), np.uint8), labels
    return nchw_to_nhwc(to_uint8_rgb(samples.images)), labels


def _part_path(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.stem}.rank{rank:03d}.npz")


def _merge_parts(out: Path, world: int):
    """Rank 0: every rank's part, in rank order (= sample order), as one (images, labels)."""
    images, labels = [], []
    for rank in range(world):
        path = _part_path(out, rank)
        part_images, part_labels = read_sample_batch(path)
        if len(part_labels):
            images.append(part_images)
            labels.append(part_labels)
        path.unlink()
    return np.concatenate(images), np.concatenate(labels)


def _write_grid(images, path: Path) -> Path:
    """PNG grid of uint8 NHWC images."""
    tiles = nhwc_to_nchw(images)  # [n, 3, H, W] uint8
    return save_png(image_grid(tiles, ncol=max(1, int(len(tiles) ** 0.5))), path)


# ------------------------------------------------------------------------------------------ CLI


def config_of(args: argparse.Namespace) -> SampleConfig:
    """The config ``fae sample`` runs with: file, overrides, then the flags (``--print-config``)."""
    cfg = load_config(SampleConfig, args.config, args.overrides)
    flags = {"generator": args.generator, "fae": args.fae, "pixel_decoder": args.pixel_decoder, "num": args.num,
             "out": args.out, "seed": args.seed, "batch_size": args.batch_size, "grid": args.grid,
             "classes": _parse_classes(args.classes), "prompts": args.prompts, "png": args.png}
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    if args.prompts is not None and args.num is None and not any(o.startswith("num=") for o in args.overrides):
        cfg = replace(cfg, num=len(read_prompt_file(args.prompts)))  # one sample per prompt
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    out = sample_to_npz(cfg)
    if du.is_main():
        print(f"samples: {out.resolve()} ({cfg.num} images)\ngrid: {grid_path(cfg).resolve()}")
        if cfg.png:
            print(f"png folder: {Path(cfg.png).resolve()} ({cfg.num} PNG files)")
    return 0


def _parse_classes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--classes must be comma-separated integers, got '{text}'") from None


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae sample` (``fae.cli`` made its parser, with the one-line help)."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", help="YAML file with SampleConfig keys")
    parser.add_argument("--generator", help="exported generator folder")
    parser.add_argument("--fae", help="exported FAE folder (with a pixel decoder)")
    parser.add_argument("--pixel-decoder", metavar="DIR", help="instead of --fae, for a generator trained on "
                        "raw backbone tokens: the exported stage-Ib pixel decoder of that backbone")
    parser.add_argument("--num", type=int, help="number of samples (default 50000)")
    parser.add_argument("--classes", help="comma-separated class ids to cycle through (default: all)")
    parser.add_argument("--prompts", help="text file, one prompt a line (text-to-image generators)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--out", help="output .npz (default samples.npz)")
    parser.add_argument("--grid", help="PNG grid path (default: --out with .png)")
    parser.add_argument("--png", metavar="DIR", help="also write every sample as DIR/000000.png, ... "
                        "(a new or empty folder; labels.csv / prompts.csv beside them)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides, e.g. sampling.steps=50 sampling.cfg_scale=1.5 "
                             "sampling.method=euler_maruyama")
    parser.set_defaults(func=run, config_of=config_of)
