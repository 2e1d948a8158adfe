"""What a training stage supplies to the one training loop (``fae.training.engine``).

A stage owns its models, data and loss; the engine owns everything else (devices, DDP/FSDP,
precision, optimisers, schedules, accumulation, clipping, EMA, checkpoints, resume, logging).
Stages never copy the loop. A stage module (``fae.training.stages.<name>``) defines
``CONFIG_CLASS`` (a dataclass with a ``train: TrainConfig`` field) and ``build_stage(cfg)``.

Rules the engine relies on:

- ``build_stage(cfg)`` and ``build_models("meta")`` must be cheap and need no weights, data or
  network (``--dry-run`` calls them). Load frozen helpers (backbone, FAE) in ``setup(device)``.
- ``build_models`` returns only *trainable* modules; parameters that should stay frozen inside
  them have ``requires_grad=False`` when returned, and the engine never turns them on.
- Call each module you get in ``loss`` through its ``forward`` (``models["x"](...)``), never
  through another method: DDP synchronises gradients, and FSDP gathers weights, only in
  ``forward``.
- ``loss`` receives the DataLoader's batch (default collate) already on the engine's device, and
  the global RNGs (torch, numpy, python) seeded from ``(train.seed, rank, step)``; draw noise from
  them (``torch.randn``), not from your own generators, and a resume is exact.
- With ``train.distributed=fsdp`` each element of every ``nn.ModuleList`` (the transformer
  blocks) becomes its own FSDP2 unit, then the whole module; keep blocks in ModuleLists.
- Batch sizes are global: each rank's ``loss`` sees ``batch_size / (world_size * grad_accum)``
  items. Return the *mean* loss over them.

Multiple optimisers (the pixel decoder's GAN) are *phases*: each step runs every phase in order on
the same batch; a phase trains only its own modules with its own AdamW. During a phase, the modules
it trains are passed DDP-wrapped, and the modules it does not train are passed unwrapped (no DDP)
and with ``requires_grad`` off, so e.g. the generator phase can call the discriminator without
touching its gradients (use ``.detach()`` or ``torch.no_grad()`` on the other side).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fae.preflight import Check
from fae.training.config import OptimConfig


@dataclass
class Phase:
    name: str  # "main", "generator", "discriminator", ...
    modules: list[str] = field(default_factory=list)  # keys of build_models() it trains; [] = all
    optim: OptimConfig = field(default_factory=OptimConfig)
    start_step: int = 0  # the phase is skipped before this step (e.g. a GAN warm-up)


class Stage:
    """Base class. Subclasses set ``name`` and ``config`` (a dataclass with a ``train`` field)."""

    name: str = "stage"
    config: Any

    def build_models(self, device: torch.device | str) -> dict[str, nn.Module]:
        """Trainable modules, by name, on ``device`` ("meta" for ``--dry-run``)."""
        raise NotImplementedError

    def setup(self, device: torch.device) -> None:
        """Load frozen helpers (backbone, FAE, perceptual net) onto ``device``. Optional."""

    def inputs(self) -> list[Check]:
        """Every file ``setup`` and the data read (data roots, weights, exports, caches), as checks
        run before anything loads (``fae.training.preflight``: ``fae train`` and its
        ``--dry-run`` checklist). Cheap: reads no weights and decodes no image. Default: none."""
        return []

    def ema_modules(self) -> list[str]:
        """Names of modules whose EMA the engine keeps (evaluation/export use the EMA copy)."""
        return []

    def phases(self) -> list[Phase]:
        """Default: one phase "main" training every module with ``train.optim``."""
        return [Phase("main", [], self.config.train.optim)]

    def train_dataset(self) -> Dataset:
        """Map-style dataset; the engine shards, shuffles and batches it (see sampler.py)."""
        raise NotImplementedError

    def loss(self, phase: str, batch: Any, models: dict[str, nn.Module], step: int
             ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Scalar loss to minimise for ``phase`` and named scalar values to log (detached)."""
        raise NotImplementedError

    def evaluate(self, models: dict[str, nn.Module], step: int, run_dir: Path) -> dict[str, float]:
        """Held-out metrics (called on every rank; EMA weights swapped in). Optional."""
        return {}

    def export(self, models: dict[str, nn.Module], run_dir: Path) -> Path | None:
        """Write the final artifact (e.g. ``run_dir/export``) from EMA weights, on rank 0. Optional."""
        return None

    # -- without weights or data: ``fae plan`` (costs) and the reduced-depth memory measurement --

    def synthetic_setup(self, device: torch.device | str) -> dict[str, nn.Module]:
        """``setup`` without weights, data or network: the frozen helpers ``loss`` needs, built
        from their architecture with random weights (on ``"meta"`` nothing is allocated), by name.
        Costs only, never results. Default: none."""
        return {}

    def synthetic_batch(self, size: int, device: torch.device | str) -> Any:
        """``size`` items of random values, as ``loss`` receives a batch (after default collate)."""
        raise NotImplementedError(f"stage '{self.name}' cannot be planned (no synthetic_batch)")

    def sampling_passes(self) -> float | None:
        """Generators: network forward passes per sample at the configured sampler (steps x calls
        per step x CFG branches), in units of one item; None for stages that do not sample."""
        return None

    def describe(self) -> dict[str, str]:
        """Extra lines for ``--dry-run`` and the run log (e.g. which perceptual loss is used)."""
        return {}
