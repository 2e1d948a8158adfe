"""What a training stage supplies to the one training loop (``fae.training.engine``).

A stage owns its models, data and loss; the engine owns everything else (devices, DDP/FSDP,
precision, optimisers, schedules, accumulation, clipping, EMA, checkpoints, resume, logging).
Stages never copy the loop.

Multiple optimisers (the pixel decoder's GAN) are *phases*: each step runs every phase in order;
a phase trains only its own modules with its own AdamW. During a phase, the modules it does not
train are passed to ``loss`` unwrapped (no DDP) and with ``requires_grad`` off, so e.g. the
generator phase can call the discriminator without touching its gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fae.training.config import OptimConfig


@dataclass
class Phase:
    name: str  # "main", "generator", "discriminator", ...
    modules: list[str]  # keys of Stage.build_models() this phase's optimiser trains
    optim: OptimConfig
    start_step: int = 0  # the phase is skipped before this step (e.g. a GAN warm-up)


class Stage:
    """Base class. Subclasses set ``name`` and ``config`` (a dataclass with a ``train`` field)."""

    name: str = "stage"
    config: Any

    def build_models(self, device: torch.device | str) -> dict[str, nn.Module]:
        """Trainable modules, by name. Frozen helpers (backbone, FAE) live on the stage itself."""
        raise NotImplementedError

    def ema_modules(self) -> list[str]:
        """Names of modules whose EMA the engine keeps (evaluation/export use the EMA copy)."""
        return []

    def phases(self) -> list[Phase]:
        return [Phase("main", list(self.build_models_names()), self.config.train.optim)]

    def build_models_names(self) -> list[str]:
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def loss(self, phase: str, batch: Any, models: dict[str, nn.Module], step: int
             ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Scalar loss to minimise for ``phase`` and named values to log (detached)."""
        raise NotImplementedError

    def evaluate(self, models: dict[str, nn.Module], step: int, run_dir: Path) -> dict[str, float]:
        """Held-out metrics (called on every rank; EMA weights swapped in). Optional."""
        return {}

    def export(self, models: dict[str, nn.Module], run_dir: Path) -> Path | None:
        """Write the final artifact (e.g. ``run_dir/export``) from EMA weights. Optional."""
        return None

    def describe(self) -> dict[str, str]:
        """Extra lines for ``--dry-run`` and the run log (e.g. which perceptual loss is used)."""
        return {}
