"""A tiny stage for the engine's tests, and an example of the stage contract.

``register()`` adds it to ``fae train`` as ``toy`` (tests only; ``tests/toy_cli.py`` runs the CLI
with it registered, for subprocess tests).

Single phase: an MLP regresses ``y = tanh(x A) b`` from 8-d Gaussian inputs. With
``two_phase=true`` it is a small GAN instead (a linear generator and an MLP critic, each with its
own optimiser), which exercises the engine's phases. Runs in seconds on CPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from fae.io import atomic_save_safetensors
from fae.training.config import OptimConfig, TrainConfig
from fae.training.stage import Phase, Stage


@dataclass
class ToyConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    samples: int = 256  # training set size
    dim: int = 8
    hidden: int = 32
    dropout: float = 0.0  # draws from the step RNG, so resume exactness covers model randomness
    augment: bool = True  # random sign flip per item (odd target), drawn from the item RNG
    two_phase: bool = False  # GAN: phase "critic" then phase "generator"
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    generator_start_step: int = 0  # generator phase skipped before this step
    nan_at_step: int | None = None  # make the loss NaN at this step (tests train.nan_policy)
    step_delay_s: float = 0.0  # sleep in every loss call (lets tests interrupt a run mid-way)


class RegressionData(Dataset):
    """``(x [dim], y [1])`` pairs from a fixed seed; ``augment`` flips the sign of both."""

    def __init__(self, n: int, dim: int, seed: int, augment: bool):
        gen = torch.Generator().manual_seed(seed)
        mixing = torch.randn(dim, dim, generator=torch.Generator().manual_seed(7)) / dim ** 0.5
        readout = torch.randn(dim, 1, generator=torch.Generator().manual_seed(8))
        self.x = torch.randn(n, dim, generator=gen)  # [n, dim]
        self.y = torch.tanh(self.x @ mixing) @ readout  # [n, 1]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        sign = -1.0 if self.augment and torch.rand(()) < 0.5 else 1.0
        return sign * self.x[i], sign * self.y[i]


def mlp(dim_in: int, hidden: int, dim_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim_out))


class ToyStage(Stage):
    """Args: config: a :class:`ToyConfig`."""

    name = "toy"

    def __init__(self, config: ToyConfig):
        self.config = config

    def build_models(self, device):
        c = self.config
        if c.two_phase:
            return {"generator": nn.Linear(c.dim, c.dim, device=device),
                    "critic": mlp(c.dim, c.hidden, 1, c.dropout).to(device)}
        return {"net": mlp(c.dim, c.hidden, 1, c.dropout).to(device)}

    def ema_modules(self):
        return ["generator"] if self.config.two_phase else ["net"]

    def phases(self):
        if not self.config.two_phase:
            return super().phases()
        return [Phase("critic", ["critic"], self.config.critic_optim),
                Phase("generator", ["generator"], self.config.train.optim,
                      start_step=self.config.generator_start_step)]

    def train_dataset(self):
        return RegressionData(self.config.samples, self.config.dim, seed=0, augment=self.config.augment)

    def loss(self, phase, batch, models, step):
        if self.config.step_delay_s:
            time.sleep(self.config.step_delay_s)
        x, y = batch  # [b, dim], [b, 1]
        if phase == "main":
            loss = F.mse_loss(models["net"](x), y)
        elif phase == "critic":  # non-saturating GAN, critic side
            with torch.no_grad():
                fake = models["generator"](torch.randn_like(x))  # [b, dim]
            loss = F.softplus(-models["critic"](x)).mean() + F.softplus(models["critic"](fake)).mean()
        else:  # generator side; the critic is frozen (requires_grad off) during this phase
            loss = F.softplus(-models["critic"](models["generator"](torch.randn_like(x)))).mean()
        if step == self.config.nan_at_step:
            loss = loss * float("nan")
        return loss, {"target_abs": y.abs().mean()}

    def evaluate(self, models, step, run_dir):
        held_out = RegressionData(128, self.config.dim, seed=1, augment=False)
        device = next(iter(models.values())).parameters().__next__().device
        x, y = held_out.x.to(device), held_out.y.to(device)
        if self.config.two_phase:
            fake = models["generator"](torch.randn_like(x))
            return {"mean_error": float((fake.mean(0) - x.mean(0)).norm())}
        return {"mse": float(F.mse_loss(models["net"](x), y))}

    def export(self, models, run_dir: Path):
        folder = Path(run_dir) / "export"
        tensors = {f"{n}.{k}": v for n, m in models.items() for k, v in m.state_dict().items()}
        atomic_save_safetensors(tensors, folder / "model.safetensors")
        return folder

    def describe(self):
        return {"task": "GAN on Gaussian data" if self.config.two_phase else "MLP regression"}


CONFIG_CLASS = ToyConfig


def build_stage(cfg: ToyConfig) -> ToyStage:
    return ToyStage(cfg)


def register() -> None:
    """Make ``fae train toy`` exist in this process (the module must be importable as toy_stage)."""
    from fae.training.stages.registry import register as register_stage

    register_stage("toy", "toy_stage")
