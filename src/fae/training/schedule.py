"""Learning-rate schedules: a pure function of the step, so resuming needs only the step."""
from __future__ import annotations

import math

from fae.training.config import OptimConfig


def lr_at(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of a phase that runs ``total_steps``.

    Linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps, then either
    constant or a cosine decay from ``lr`` to ``min_lr`` at the last step (paper: peak 1e-4,
    cosine, 1000 warm-up steps for the autoencoder and pixel decoder; constant for the generator).
    """
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    decay_steps = max(1, total_steps - optim.warmup_steps - 1)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """Sets an optimiser's learning rate each step; ``state_dict`` records it for the checkpoint.

    Args:
        optimizer: the phase's optimiser (every param group gets the same LR).
        optim: the phase's optimiser config (lr, schedule, warm-up, min_lr).
        total_steps: the number of steps this phase runs (``train.steps - phase.start_step``).
    """

    def __init__(self, optimizer, optim: OptimConfig, total_steps: int):
        self.optimizer = optimizer
        self.optim = optim
        self.total_steps = total_steps
        self.last_step = -1

    def apply(self, step: int) -> float:
        lr = lr_at(step, self.optim, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "total_steps": self.total_steps,
                "schedule": self.optim.schedule, "lr": self.optim.lr}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
