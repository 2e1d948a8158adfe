"""The content-keyed stage store shared by arms (and experiments): ``STORE/<section>-<key>``,
where ``key`` hashes what the stage computes (its resolved config without place and volatile
keys; the upstream exports it reads are named by their own keyed folders, so the key covers them
too). Two arms with the same FAE settings therefore share one FAE; an arm whose FAE settings
changed gets a new one.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fae.demo.stages import StageSpec
from fae.experiment.config import ResolvedArm
from fae.training.run_folder import computed_settings


def digest(data: Any, n: int = 12) -> str:
    """The first ``n`` hex digits of the sha256 of ``data`` as JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:n]


def resolved_config(spec: StageSpec):
    """The stage's config dataclass (file + overrides, validated once per spec; no weights or data)."""
    return spec.validate()


def stage_key(spec: StageSpec) -> str:
    """Hash of what the stage computes: its resolved config without place and volatile keys."""
    return digest(computed_settings(resolved_config(spec)))


def keyed(spec: StageSpec, store: Path, extra: list[str] = ()) -> StageSpec:
    """``spec`` with ``extra`` overrides, training in ``store/<section>-<key>``."""
    spec = spec.with_overrides(list(extra))
    return spec.with_overrides([f"train.run_dir={store / f'{spec.section}-{stage_key(spec)}'}"])


def run_dir(spec: StageSpec) -> Path:
    """The run folder the spec trains in."""
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

    def recorded_paths(self) -> dict[str, Any]:
        """The arm's stage folders and latent cache relative to the experiment root (the store's
        parent), as result files record them: no machine path in anything committed."""
        root = self.store.parent
        return {"stages": {s: os.path.relpath(run_dir(p), root) for s, p in self.stages.items()},
                "latents": os.path.relpath(self.latents, root)}
