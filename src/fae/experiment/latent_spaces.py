"""The latent spaces ``fae experiment`` puts a generator on, one small strategy each: which
upstream stages it trains, where its latent cache lives and what shape it has, how the cache is
written, what decodes its latents into images, and what encodes held-out images into it.

* ``fae``: the FAE's latents (stages Ia, Ib, II; the demo's latent cache step).
* ``tokens``: the raw backbone tokens (stage Ib decodes them; :class:`fae.backbones.token_space.TokenSpace`).
* ``pixels``: the patchified pixels (:class:`fae.experiment.spaces.PatchSpace`).
* ``pixel-ae``: a pixel VAE of the FAE's latent shape (``fae.autoencoder.pixel_autoencoder``).

Every latent cache records the content key of what wrote it (``fae.freshness``); its folder
name is keyed on the same inputs, so a cache is reused exactly when its inputs are the same.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fae import freshness
from fae.autoencoder import FAE
from fae.autoencoder.pixel_autoencoder import PixelAutoencoder
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.backbones.registry import get_info, load_backbone
from fae.backbones.token_cache import TokenCache
from fae.backbones.token_space import TokenEncoder, TokenSpace
from fae.config import to_dict
from fae.data.datasets import DataConfig
from fae.data.fashion_mnist import FashionMNIST
from fae.data.latent_cache import CacheConfig, LatentCache, complete_cache
from fae.data.latent_cache_writer import write_cache
from fae.demo.pipeline import cache_step
from fae.demo.stages import StageSpec, stage_spec
from fae.experiment.spaces import PatchSpace
from fae.experiment.store import digest, keyed, resolved_config, run_dir
from fae.generation.decode import token_decoder
from fae.training.latents import measure_latent_stats, write_space_cache

if TYPE_CHECKING:
    from fae.experiment.config import ArmConfig
    from fae.experiment.store import ArmPlan

IMAGE_SIZE = 28  # Fashion-MNIST


@dataclass
class SpacePlan:
    """What a latent space trains and where its latents go.

    Attributes:
        stages: upstream stage specs by section, in training order.
        latents: the latent cache folder.
        shape: (c, h, w) the generator learns.
        fae_export: the generator's ``data.fae`` ("null" when the space is not an FAE).
    """

    stages: dict[str, StageSpec]
    latents: Path
    shape: tuple[int, int, int]
    fae_export: str = "null"


def _grid(cfg: ArmConfig) -> tuple[int, int]:
    return tuple(get_info(cfg.backbone.name, cfg.backbone.resolution).grid)


def _latent_data(cfg: ArmConfig) -> DataConfig:
    return DataConfig(name="fashion-mnist", root=cfg.data_root, split="train", limit=cfg.latents.limit)


def _export(plan: ArmPlan, section: str) -> Path:
    return run_dir(plan.stages[section]) / "export"


class LatentSpace(ABC):
    """One latent space (subclasses fill in the four questions)."""

    @abstractmethod
    def plan(self, cfg: ArmConfig, demo: dict[str, StageSpec], base: Path, store: Path) -> SpacePlan:
        """The stages (keyed in ``store``) and the latent cache of an arm in this space."""

    @abstractmethod
    def write_latents(self, plan: ArmPlan) -> str:
        """Write (or resume, or skip) the arm's latent cache; returns what it did."""

    @abstractmethod
    def decoder(self, plan: ArmPlan) -> tuple[torch.nn.Module, Path | None]:
        """The module that turns the arm's latents into images, and the file that identifies it."""

    def encoder(self, plan: ArmPlan, decoder: torch.nn.Module) -> Any:
        """What turns held-out images into the arm's latents (``.encode(images)``)."""
        return decoder

    def upstream(self, plan: ArmPlan, section: str) -> list[Path]:
        """The exports stage ``section`` reads (its freshness inputs)."""
        return []


def _write_space_cache(plan: ArmPlan, space, dataset, source: str, inputs: list[Path]) -> str:
    """Measure the space's statistics on ``dataset`` and write its latent cache (resumable;
    skipped when complete and produced from the same inputs)."""
    cfg = plan.arm.config

    def write() -> None:
        space.set_latent_stats(*measure_latent_stats(space, dataset, plan.latent_shape[0], range(len(dataset)),
                                                     cfg.latents.batch_size))
        write_space_cache(CacheConfig(fae=source, out=str(plan.latents), data=_latent_data(cfg),
                                      batch_size=cfg.latents.batch_size), space,
                          label=f"{cfg.space} ({source})", resolution=cfg.backbone.resolution, dataset=dataset)

    return _produce_latents(plan, {"source": source}, inputs, write)


def _produce_latents(plan: ArmPlan, settings: dict, inputs: list[Path], write) -> str:
    """``write()`` the arm's latent cache unless it is complete and keyed on these settings, the
    arm's data plan and ``inputs`` (``fae.freshness``)."""
    cfg = plan.arm.config
    key = freshness.content_key({**settings, "data": to_dict(_latent_data(cfg)),
                                 "batch_size": cfg.latents.batch_size}, inputs)
    return freshness.produce(plan.latents, key, lambda: complete_cache(plan.latents), write, "latent cache")


class FAELatents(LatentSpace):
    """The FAE's latents: stages Ia, Ib and II, cached by the demo's latent cache step."""

    def plan(self, cfg, demo, base, store):
        ae, ib = keyed(demo["ae"], store), keyed(demo["ib"], store)
        ae_dir, ib_dir = run_dir(ae), run_dir(ib)
        ii = keyed(demo["ii"], store, [f"fae={ae_dir / 'export'}", f"init_from={ib_dir / 'export'}"])
        latents = store / f"latents-{digest({'fae': str(run_dir(ii)), 'limit': cfg.latents.limit, 'data_root': cfg.data_root})}"
        return SpacePlan({"autoencoder": ae, "pixel_decoder_ib": ib, "pixel_decoder_ii": ii}, latents,
                         (resolved_config(ae).model.latent_channels, *_grid(cfg)), str(run_dir(ii) / "export"))

    def write_latents(self, plan):
        return cache_step(plan.arm.config, _export(plan, "pixel_decoder_ii"), plan.latents, plan.store)

    def decoder(self, plan):
        export = _export(plan, "pixel_decoder_ii")
        return FAE.from_pretrained(export), export / "model.safetensors"

    def upstream(self, plan, section):
        if section == "pixel_decoder_ii":
            return [_export(plan, s) for s in ("autoencoder", "pixel_decoder_ib")]
        return []


class TokenLatents(LatentSpace):
    """The raw backbone tokens as latents, decoded by the stage-Ib pixel decoder."""

    def plan(self, cfg, demo, base, store):
        ib = keyed(demo["ib"], store)
        latents_key = {"limit": cfg.latents.limit, "data_root": cfg.data_root}
        latents = store / f"latents-tokens-{digest({'decoder': str(run_dir(ib)), 'backbone': str(cfg.backbone), **latents_key})}"
        dim = get_info(cfg.backbone.name, cfg.backbone.resolution).dim
        return SpacePlan({"pixel_decoder_ib": ib}, latents, (dim, *_grid(cfg)))

    def write_latents(self, plan):
        cfg = plan.arm.config
        backbone = load_backbone(cfg.backbone.name, resolution=cfg.backbone.resolution)
        tokens = TokenCache(plan.store / "token_cache", backbone).dataset(_latent_data(cfg))
        c, h, w = plan.latent_shape
        return _write_space_cache(plan, TokenSpace((h, w), c), tokens, "raw backbone tokens", [])

    def decoder(self, plan):
        export = _export(plan, "pixel_decoder_ib")
        decoder = token_decoder(PixelDecoder.from_pretrained(export), plan.latent_shape,
                                *LatentCache(plan.latents).stats(), str(plan.latents), str(export))
        return decoder, export / "model.safetensors"

    def encoder(self, plan, decoder):
        cfg = plan.arm.config
        return TokenEncoder(decoder, load_backbone(cfg.backbone.name, resolution=cfg.backbone.resolution))


class PixelLatents(LatentSpace):
    """The pixels themselves, patchified to the FAE's token grid."""

    def plan(self, cfg, demo, base, store):
        grid = _grid(cfg)
        latents = store / f"latents-pixels-{digest({'grid': grid, 'limit': cfg.latents.limit, 'data_root': cfg.data_root})}"
        return SpacePlan({}, latents, PatchSpace(grid, IMAGE_SIZE).latent_shape)

    def write_latents(self, plan):
        cfg = plan.arm.config
        images = FashionMNIST("train", root=cfg.data_root, limit=cfg.latents.limit)
        return _write_space_cache(plan, PatchSpace(plan.latent_shape[1:], images.images.shape[-1]), images,
                                  "patchified pixels", [])

    def decoder(self, plan):
        decoder = PatchSpace(plan.latent_shape[1:], IMAGE_SIZE)
        decoder.set_latent_stats(*LatentCache(plan.latents).stats())
        return decoder, None


class PixelAELatents(LatentSpace):
    """A pixel VAE with the FAE's latent shape (its own stage, ``pixel-autoencoder``)."""

    def plan(self, cfg, demo, base, store):
        grid = _grid(cfg)
        c = resolved_config(keyed(demo["ae"], store)).model.latent_channels
        root_override = [f"data.root={cfg.data_root}"] if cfg.data_root else []
        pae = keyed(stage_spec("pixel_autoencoder", "pixel-autoencoder", cfg.pixel_autoencoder, base, []), store,
                    root_override + [f"model.latent_channels={c}", f"model.grid={list(grid)}"])
        latents = store / f"latents-pixel-ae-{digest({'autoencoder': str(run_dir(pae)), 'limit': cfg.latents.limit, 'data_root': cfg.data_root})}"
        return SpacePlan({"pixel_autoencoder": pae}, latents, (c, *grid))

    def write_latents(self, plan):
        cfg = plan.arm.config
        export = _export(plan, "pixel_autoencoder")

        def write() -> None:
            images = FashionMNIST("train", root=cfg.data_root, limit=cfg.latents.limit)
            model = PixelAutoencoder.from_pretrained(export)
            identity = {"identity": model.identity(), "backbone": "pixel autoencoder",
                        "resolution": images.images.shape[-1], "latent_shape": list(model.latent_shape)}
            write_cache(CacheConfig(fae=str(export), out=str(plan.latents), data=_latent_data(cfg),
                                    batch_size=cfg.latents.batch_size), model, identity=identity,
                        latent_mean=model.latent_mean, latent_std=model.latent_std, dataset=images)

        return _produce_latents(plan, {}, [export], write)

    def decoder(self, plan):
        export = _export(plan, "pixel_autoencoder")
        return PixelAutoencoder.from_pretrained(export), export / "model.safetensors"


SPACES: dict[str, LatentSpace] = {"fae": FAELatents(), "tokens": TokenLatents(), "pixels": PixelLatents(),
                                  "pixel-ae": PixelAELatents()}


def space_of(plan: ArmPlan) -> LatentSpace:
    """The strategy of the arm's latent space."""
    return SPACES[plan.arm.config.space]
