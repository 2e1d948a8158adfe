"""Latents to images: sample a trained generator and decode with its FAE (``fae sample``).

    fae sample --generator runs/gen/export --fae runs/fae/export --num 50000 --out samples.npz \
        [--classes 0,1,2] [--seed 0] [--batch-size 64] [--config FILE] [sampling.cfg_scale=1.5 ...]

Writes an ADM-format ``.npz`` (``arr_0``: uint8 [N, H, W, 3]; ``labels``: int64 [N]) and a PNG grid
of the first samples beside it. Sample i has class ``classes[i % len(classes)]`` (equal counts per
class when len(classes) divides N) and its own noise seeded by (seed, i), so the result does not
depend on the batch size or the number of ranks. Under torchrun each rank samples a contiguous
slice and rank 0 assembles the file; there, pass settings as ``key=value`` (``num=50000``):
torchrun's own parser mistakes ``--num`` for its ``--numa-binding``.
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch

from fae.errors import ConfigError, LatentCacheError


@dataclass
class SampleConfig:
    """``fae sample`` settings (command-line flags override the file).

    Args:
        generator: exported generator folder (``fae train generator`` writes ``run_dir/export``;
            its weights are the EMA weights).
        fae: exported FAE folder with a pixel decoder; must be the FAE the generator was trained for.
        num: number of samples N.
        classes: classes to cycle through (default: all of the generator's classes).
        seed: base seed (sample i uses a generator seeded from (seed, i)).
        batch_size: samples per forward pass on each rank.
        out: the ``.npz`` file to write.
        grid: PNG grid path (default: ``out`` with ``.png``); grid_count samples are shown.
        grid_count: how many samples the grid shows.
        sampling: overrides of the generator's stored sampler settings (keys of ``SamplerConfig``).
        precision: "fp32" (default) or "bf16" autocast for the generator and decoder on CUDA
            (users of peer systems saw bf16 sampling shift FID: compare like with like).
    """

    generator: str = ""
    fae: str = ""
    num: int = 50000
    classes: list[int] | None = None
    seed: int = 0
    batch_size: int = 64
    out: str = "samples.npz"
    grid: str | None = None
    grid_count: int = 64
    sampling: dict[str, Any] = field(default_factory=dict)
    precision: Literal["fp32", "bf16"] = "fp32"

    def check(self) -> None:
        """Called when sampling starts (flags may fill the required folders after loading)."""
        for key in ("generator", "fae"):
            if not getattr(self, key):
                raise ConfigError(f"config key '{key}' is required (or pass --{key} DIR)")
        if self.num < 1 or self.batch_size < 1:
            raise ConfigError(f"config keys 'num' and 'batch_size' must be >= 1, got {self.num} / "
                              f"{self.batch_size}")


def sampler_config(generator, overrides: dict[str, Any]):
    """The generator's stored sampler settings with ``overrides`` applied (validated)."""
    from fae.config import from_dict, to_dict
    from fae.generation.samplers import SamplerConfig

    cfg = from_dict(SamplerConfig, {**to_dict(generator.sampling), **overrides}, prefix="sampling")
    cfg.validate()
    return cfg


def check_pair(generator, fae, generator_dir: str, fae_dir: str) -> None:
    """Refuse an FAE other than the one whose latents the generator was trained on."""
    recorded = generator.fae_identity.get("identity")
    if recorded is not None and recorded != fae.identity():
        raise LatentCacheError(f"generator '{generator_dir}' was trained on latents of another FAE "
                               f"(identity {recorded[:12]}...) than '{fae_dir}' "
                               f"(identity {fae.identity()[:12]}...)")
    if tuple(fae.latent_shape) != tuple(generator.config.latent_shape):
        raise LatentCacheError(f"FAE '{fae_dir}' makes latents {list(fae.latent_shape)}, generator "
                               f"'{generator_dir}' samples {list(generator.config.latent_shape)}")


def class_list(generator, classes: list[int] | None) -> list[int] | None:
    """Classes to cycle through; None for an unconditional generator."""
    n = generator.config.num_classes
    if n == 0:
        if classes:
            raise ConfigError("this generator is unconditional: do not pass classes")
        return None
    classes = list(range(n)) if not classes else list(classes)
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise ConfigError(f"classes {bad} are outside the generator's [0, {n - 1}]")
    return classes


@torch.no_grad()
def generate_images(generator, fae, indices: range, classes: list[int] | None, seed: int, sampling,
                    batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (uint8 images [b, H, W, 3], labels [b]) for the given sample indices, in order."""
    from fae.generation.seeding import balanced_labels
    from fae.report import to_uint8

    labels = balanced_labels(indices, classes) if classes is not None else None
    device = fae.latent_mean.device
    batches = generator.iter_samples(indices, labels, seed=seed, config=sampling, batch_size=batch_size)
    for start, latents in zip(range(0, len(indices), batch_size), batches):
        images = to_uint8(fae.decode(latents.to(device)))  # [b, 3, H, W]
        batch_labels = (labels[start:start + len(latents)] if labels is not None
                        else torch.full((len(latents),), -1))
        yield images.permute(0, 2, 3, 1).numpy(), batch_labels.numpy()


def sample_to_npz(cfg: SampleConfig) -> Path:
    """Run ``fae sample`` from a config; returns the ``.npz`` path (on every rank)."""
    from fae.autoencoder import FAE
    from fae.generation import Generator
    from fae.generation.seeding import shard_indices
    from fae import distributed as du

    cfg.check()
    device = du.device()
    generator = Generator.from_pretrained(cfg.generator, device=device)
    fae = FAE.from_pretrained(cfg.fae, device=device)
    check_pair(generator, fae, cfg.generator, cfg.fae)
    sampling = sampler_config(generator, cfg.sampling)
    classes = class_list(generator, cfg.classes)
    out = Path(cfg.out)
    indices = shard_indices(cfg.num, du.rank(), du.world_size())
    bf16 = cfg.precision == "bf16" and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        parts = list(generate_images(generator, fae, indices, classes, cfg.seed, sampling, cfg.batch_size))
    images = np.concatenate([p[0] for p in parts]) if parts else None
    labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    if du.world_size() > 1:
        _write_npz(_part_path(out, du.rank()), images, labels)
    du.barrier()
    if du.is_main():
        if du.world_size() > 1:
            images, labels = _merge_parts(out, du.world_size())
        _write_npz(out, images, labels)
        _write_grid(images[:cfg.grid_count], Path(cfg.grid) if cfg.grid else out.with_suffix(".png"))
    du.barrier()
    return out


def _part_path(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.stem}.rank{rank:03d}.npz")


def _write_npz(path: Path, images: np.ndarray | None, labels: np.ndarray) -> None:
    from fae.io import atomic_write

    if images is None:
        images = np.zeros((0, 1, 1, 3), np.uint8)
    atomic_write(path, lambda f: np.savez(f, arr_0=images, labels=labels))


def _merge_parts(out: Path, world: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for rank in range(world):
        path = _part_path(out, rank)
        with np.load(path) as part:
            if len(part["labels"]):
                images.append(part["arr_0"])
                labels.append(part["labels"])
        path.unlink()
    return np.concatenate(images), np.concatenate(labels)


def _write_grid(images: np.ndarray, path: Path) -> Path:
    from fae.report import image_grid, save_png

    tiles = torch.from_numpy(images).permute(0, 3, 1, 2)  # [n, 3, H, W] uint8
    return save_png(image_grid(tiles, ncol=max(1, int(len(tiles) ** 0.5))), path)


# ------------------------------------------------------------------------------------------ CLI


def run(args: argparse.Namespace) -> int:
    from fae.config import load_config
    from fae import distributed as du

    cfg = load_config(SampleConfig, args.config, args.overrides)
    flags = {"generator": args.generator, "fae": args.fae, "num": args.num, "out": args.out,
             "seed": args.seed, "batch_size": args.batch_size, "grid": args.grid,
             "classes": _parse_classes(args.classes)}
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    out = sample_to_npz(cfg)
    if du.is_main():
        grid = Path(cfg.grid) if cfg.grid else out.with_suffix(".png")
        print(f"samples: {out.resolve()} ({cfg.num} images)\ngrid: {grid.resolve()}")
    return 0


def _parse_classes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--classes must be comma-separated integers, got '{text}'") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="sample a trained generator and decode to images "
                                   "(ADM .npz + PNG grid)", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with SampleConfig keys")
    parser.add_argument("--generator", help="exported generator folder")
    parser.add_argument("--fae", help="exported FAE folder (with a pixel decoder)")
    parser.add_argument("--num", type=int, help="number of samples (default 50000)")
    parser.add_argument("--classes", help="comma-separated class ids to cycle through (default: all)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--out", help="output .npz (default samples.npz)")
    parser.add_argument("--grid", help="PNG grid path (default: --out with .png)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides, e.g. sampling.steps=50 sampling.cfg_scale=1.5 "
                             "sampling.method=euler_maruyama")
    parser.set_defaults(func=run)
