"""Phases (one optimiser each): resolving them, their AdamW, and which modules get gradients."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from fae.errors import ConfigError
from fae.training.schedule import Schedule
from fae.training.stage import Phase
from fae.training.wrappers import ddp_of, is_fsdp, unwrap


def resolve_phases(phases: list[Phase], names: list[str]) -> list[Phase]:
    """Expand ``modules=[]`` to every module and check each module is trained by one phase."""
    if not phases:
        raise ConfigError("the stage defines no training phase")
    out, owner = [], {}
    for phase in phases:
        modules = list(phase.modules) or list(names)
        for name in modules:
            if name not in names:
                raise ConfigError(f"phase '{phase.name}' trains unknown module '{name}' "
                                  f"(the stage builds: {', '.join(names)})")
            if name in owner:
                raise ConfigError(f"module '{name}' is trained by two phases: '{owner[name]}' and "
                                  f"'{phase.name}'")
            owner[name] = phase.name
        out.append(Phase(phase.name, modules, phase.optim, phase.start_step))
    untrained = [n for n in names if n not in owner]
    if untrained:
        raise ConfigError(f"modules {untrained} are built but no phase trains them; frozen helpers "
                          "belong on the stage, not in build_models()")
    return out


def make_adamw(params: list[nn.Parameter], names: list[str], optim, device: torch.device
               ) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms, embeddings of 1-D shape);
    fused kernels on CUDA."""
    decay = [p for p, n in zip(params, names) if p.ndim >= 2]
    no_decay = [p for p, n in zip(params, names) if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), **kwargs)


@dataclass
class PhaseRunner:
    """One phase's modules, trainable parameters, optimiser and LR schedule."""

    phase: Phase
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: Schedule

    @property
    def name(self) -> str:
        return self.phase.name

    def active(self, step: int) -> bool:
        return step >= self.phase.start_step


def build_runner(phase: Phase, wrapped: dict[str, nn.Module], trainable: dict[str, list[str]],
                 device: torch.device, total_steps: int) -> PhaseRunner:
    params, names = [], []
    for module_name in phase.modules:
        by_name = dict(unwrap(wrapped[module_name]).named_parameters())
        for pname in trainable[module_name]:
            params.append(by_name[pname])
            names.append(f"{module_name}.{pname}")
    optimizer = make_adamw(params, names, phase.optim, device)
    schedule = Schedule(optimizer, phase.optim, max(1, total_steps - phase.start_step))
    return PhaseRunner(phase, params, optimizer, schedule)


def select_trainable(runner: PhaseRunner, runners: list[PhaseRunner]) -> None:
    """``requires_grad`` on for this phase's trainable parameters, off for every other phase's."""
    mine = {id(p) for p in runner.params}
    for other in runners:
        for p in other.params:
            p.requires_grad_(id(p) in mine)


def restore_trainable(runners: list[PhaseRunner]) -> None:
    for runner in runners:
        for p in runner.params:
            p.requires_grad_(True)


@contextlib.contextmanager
def gradient_sync(modules: list[nn.Module], enabled: bool) -> Iterator[None]:
    """Skip the cross-rank gradient reduction (DDP ``no_sync`` / FSDP2
    ``set_requires_gradient_sync``) for all but the last micro-batch of a step."""
    if enabled:
        yield
        return
    with contextlib.ExitStack() as stack:
        fsdp = []
        for module in modules:
            ddp = ddp_of(module)
            if ddp is not None:
                stack.enter_context(ddp.no_sync())
            elif is_fsdp(module):
                unwrap(module).set_requires_gradient_sync(False)
                fsdp.append(unwrap(module))
        try:
            yield
        finally:
            for module in fsdp:
                module.set_requires_gradient_sync(True)


def grad_norm_and_clip(params: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Global gradient norm before clipping (a full tensor, also under FSDP); clips to ``max_norm``."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm
