"""Where each arm's stages run: the content-keyed store shared by arms and experiments
(``fae.experiment.store``) for the upstream stages its latent space needs
(``fae.experiment.latent_spaces``), and the arm's own folder ``ROOT/NAME/ARM`` for the generator
and its evaluation.

An arm's upstream stages are the demo's (``fae.demo.pipeline.stage_specs``: same files, same
overrides), each training in ``STORE/<section>-<key>``; the time-shift arms all reuse one FAE.
"""
from __future__ import annotations

import math
from pathlib import Path

from fae.demo.pipeline import stage_specs
from fae.experiment.config import ResolvedArm
from fae.experiment.latent_spaces import SPACES
from fae.experiment.store import ArmPlan


def plan_arm(arm: ResolvedArm, base: Path, root: Path, store: Path, steps: list[int]) -> ArmPlan:
    """The arm's stages (keyed in ``store``), latent cache and generator (in ``root/ARM``)."""
    cfg = arm.config
    demo = stage_specs(cfg, base, store)  # token cache store/token_cache; run folders re-keyed by the space
    space = SPACES[cfg.space].plan(cfg, demo, base, store)
    folder = root / arm.name
    generator = demo["gen"].with_overrides([
        f"train.run_dir={folder / 'generator'}", f"data.cache={space.latents}", f"data.fae={space.fae_export}",
        f"train.steps={steps[-1]}", f"train.milestones={list(steps)}", f"train.ckpt_every={math.gcd(*steps)}"])
    generator.validate()
    return ArmPlan(arm, folder, store, space.stages, space.latents, space.shape, generator, list(steps))
