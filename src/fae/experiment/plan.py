"""Where each arm's stages run: a content-keyed store shared by arms (and experiments).

An arm's upstream stages are the demo's (``fae.demo.pipeline.stage_specs``: same files, same
overrides), but each trains in ``STORE/<section>-<key>`` where ``key`` hashes the stage's resolved
config (run folder and volatile keys left out; the upstream exports it reads are named by their
own keyed folders, so the key covers them too). Two arms with the same FAE settings therefore
share one FAE; an arm whose FAE settings changed gets a new one; the time-shift arms all reuse one.
Only the generator and its evaluation live in the arm's own folder ``ROOT/NAME/ARM``.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fae.demo.pipeline import StageSpec, stage_spec, stage_specs
from fae.experiment.config import ResolvedArm

# Keys that say where a stage writes, not what it computes.
_PLACE_KEYS = ("train.run_dir", "token_cache_dir")


def digest(data: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:n]


def resolved_config(spec: StageSpec):
    """The stage's config dataclass (file + overrides, validated; no weights or data)."""
    from fae.commands.train import STAGES
    from fae.config import load_config

    spec.validate()  # errors name the stage and its overrides
    schema = importlib.import_module(STAGES[spec.kind]).CONFIG_CLASS
    return load_config(schema, spec.config, spec.overrides)


def stage_key(spec: StageSpec) -> str:
    """Hash of what the stage computes: its resolved config without place and volatile keys."""
    from fae.training.run_folder import VOLATILE_KEYS, flatten, saved_form

    flat = flatten(saved_form(resolved_config(spec)))
    return digest({k: v for k, v in flat.items() if k not in VOLATILE_KEYS and k not in _PLACE_KEYS})


def keyed(spec: StageSpec, store: Path, extra: list[str] = ()) -> StageSpec:
    """``spec`` with ``extra`` overrides, training in ``store/<section>-<key>``."""
    spec = StageSpec(spec.section, spec.kind, spec.config, spec.overrides + list(extra))
    run_dir = store / f"{spec.section}-{stage_key(spec)}"
    return StageSpec(spec.section, spec.kind, spec.config, spec.overrides + [f"train.run_dir={run_dir}"])


def run_dir(spec: StageSpec) -> Path:
    return Path(resolved_config(spec).train.run_dir)


@dataclass
class ArmPlan:
    """Everything one arm runs, with its folders.

    Attributes:
        arm: the resolved arm.
        folder: ``ROOT/NAME/ARM`` (generator, evaluation, result.json).
        store: the shared stage store.
        stages: upstream stage specs by section, in training order (only those its space needs).
        latents: the latent cache folder.
        latent_shape: (c, h, w) the generator learns.
        generator: the generator's spec (run folder ``folder/generator``).
    """

    arm: ResolvedArm
    folder: Path
    store: Path
    stages: dict[str, StageSpec]
    latents: Path
    latent_shape: tuple[int, int, int]
    generator: StageSpec
    steps: list[int] = field(default_factory=list)

    def key(self, evaluation: dict[str, Any]) -> str:
        """What the arm's results depend on: its config, every stage it runs, the evaluation."""
        return digest({"arm": self.arm.key(), "stages": {s: str(run_dir(p)) for s, p in self.stages.items()},
                       "latents": str(self.latents), "generator": stage_key(self.generator),
                       "evaluation": evaluation}, 64)


def _grid(cfg) -> tuple[int, int]:
    from fae.backbones.registry import get_info

    return tuple(get_info(cfg.backbone.name, cfg.backbone.resolution).grid)


def plan_arm(arm: ResolvedArm, base: Path, root: Path, store: Path, steps: list[int]) -> ArmPlan:
    """The arm's stages (keyed in ``store``), latent cache and generator (in ``root/ARM``)."""
    cfg = arm.config
    demo = stage_specs(cfg, base, store)  # token cache store/token_cache; run folders re-keyed below
    ae, ib = keyed(demo["ae"], store), keyed(demo["ib"], store)
    ae_dir, ib_dir = run_dir(ae), run_dir(ib)
    grid = _grid(cfg)
    latents_key = {"limit": cfg.latents.limit, "data_root": cfg.data_root}
    if cfg.space == "fae":
        ii = keyed(demo["ii"], store, [f"fae={ae_dir / 'export'}", f"init_from={ib_dir / 'export'}"])
        stages = {"autoencoder": ae, "pixel_decoder_ib": ib, "pixel_decoder_ii": ii}
        latents = store / f"latents-{digest({'fae': str(run_dir(ii)), **latents_key})}"
        shape = (resolved_config(ae).model.latent_channels, *grid)
        fae_export = str(run_dir(ii) / "export")
    elif cfg.space == "tokens":
        from fae.backbones.registry import get_info

        stages = {"pixel_decoder_ib": ib}
        latents = store / f"latents-tokens-{digest({'decoder': str(ib_dir), 'backbone': str(cfg.backbone), **latents_key})}"
        shape = (get_info(cfg.backbone.name, cfg.backbone.resolution).dim, *grid)
        fae_export = "null"
    elif cfg.space == "pixels":
        from fae.experiment.spaces import PatchSpace

        stages = {}
        latents = store / f"latents-pixels-{digest({'grid': grid, **latents_key})}"
        shape = PatchSpace(grid, 28).latent_shape
        fae_export = "null"
    else:  # pixel-ae: a pixel VAE of the FAE's latent shape
        c = resolved_config(ae).model.latent_channels
        root_override = [f"data.root={cfg.data_root}"] if cfg.data_root else []
        pae = keyed(stage_spec("pixel_autoencoder", "pixel-autoencoder", cfg.pixel_autoencoder, base, []), store,
                    root_override + [f"model.latent_channels={c}", f"model.grid={list(grid)}"])
        stages = {"pixel_autoencoder": pae}
        latents = store / f"latents-pixel-ae-{digest({'autoencoder': str(run_dir(pae)), **latents_key})}"
        shape = (c, *grid)
        fae_export = "null"
    folder = root / arm.name
    checkpoint_every = math.gcd(*steps)
    generator = StageSpec(demo["gen"].section, "generator", demo["gen"].config, demo["gen"].overrides + [
        f"train.run_dir={folder / 'generator'}", f"data.cache={latents}", f"data.fae={fae_export}",
        f"train.steps={steps[-1]}", f"train.milestones={list(steps)}", f"train.ckpt_every={checkpoint_every}"])
    resolved_config(generator)
    return ArmPlan(arm, folder, store, stages, latents, shape, generator, list(steps))
