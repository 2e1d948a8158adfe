"""The training section shared by every stage's config (``train:`` in the YAML files)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fae.errors import ConfigError


@dataclass
class OptimConfig:
    """AdamW settings of one optimiser (paper: AdamW (0.9, 0.999), LR 1e-4)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0  # floor of the cosine schedule
    grad_clip: float | None = 1.0  # max global grad-norm; null disables clipping

    def validate(self) -> None:
        if self.lr < 0 or self.min_lr < 0:
            raise ConfigError(f"optimiser lr/min_lr must be >= 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optimiser warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optimiser grad_clip must be > 0 or null, got {self.grad_clip}")


@dataclass
class TrainConfig:
    """Loop settings common to all stages. Batch sizes are global (summed over ranks)."""

    run_dir: str = "runs/default"
    steps: int = 1000  # optimiser steps
    batch_size: int = 64  # global batch per optimiser step
    grad_accum: int = 1  # micro-batches per step on each rank
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema_decay: float | None = 0.9999  # null disables EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1+n)/(10+n)) after n updates (our choice)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2 fully_shard, for models too big for DDP
    find_unused_parameters: bool = False  # DDP option for modules whose forward skips parameters
    num_workers: int = 0
    log_every: int = 10
    ckpt_every: int = 1000  # 0: checkpoint only at the end
    keep_last: int = 2
    milestones: list[int] = field(default_factory=list)  # steps whose checkpoints are kept forever
    eval_every: int = 0  # 0: evaluate only at the end
    nan_policy: Literal["skip", "stop"] = "stop"
    max_nan_skips: int = 100  # with nan_policy=skip, stop after this many skipped steps
    progress: bool = True
    tensorboard: bool = True  # write TensorBoard events when the package is installed

    def validate(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"config key 'train.steps' must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"config key 'train.batch_size' must be >= 1, got {self.batch_size}")
        if self.grad_accum < 1:
            raise ConfigError(f"config key 'train.grad_accum' must be >= 1, got {self.grad_accum}")
        for key in ("log_every", "keep_last"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'train.{key}' must be >= 1, got {getattr(self, key)}")
        for key in ("ckpt_every", "eval_every", "num_workers", "max_nan_skips"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'train.{key}' must be >= 0, got {getattr(self, key)}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"config key 'train.ema_decay' must be in [0, 1), got {self.ema_decay}")
