"""Exponential moving average of a module's parameters (evaluation and export use the EMA copy).

The shadow tensors have the same type and placement as the parameters (sharded ``DTensor``s
under FSDP), so the update is a local ``lerp`` on every rank with no communication.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from fae.training.wrappers import reshard


class EMA:
    """EMA of ``module``'s trainable parameters.

    Args:
        module: the unwrapped module whose parameters are tracked (names from ``named_parameters``).
        decay: EMA decay per optimiser step (paper/DiT: 0.9999).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so short runs are not
            dominated by the random initialisation (our choice; negligible over 1M steps).
        names: parameter names to track (default: those with ``requires_grad`` now).
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True,
                 names: list[str] | None = None):
        self.module = module
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        params = dict(module.named_parameters())
        if names is None:
            names = [n for n, p in params.items() if p.requires_grad]
        self.shadow = {n: params[n].detach().clone() for n in names}
        self.sharded = any(hasattr(t, "device_mesh") for t in self.shadow.values())  # FSDP DTensors

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * param (Polyak averaging)."""
        weight = 1.0 - self.current_decay()
        if self.sharded:
            reshard(self.module)
        params = dict(self.module.named_parameters())
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach() for n in names],
                             weight)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights into the module (and the live weights back after)."""
        self._swap()
        try:
            yield self.module
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        if self.sharded:
            reshard(self.module)  # FSDP: names must map to the shards
        params = dict(self.module.named_parameters())
        for name, shadow in self.shadow.items():
            live = params[name].detach().clone()
            params[name].copy_(shadow)
            shadow.copy_(live)

    def state_dict(self) -> dict:
        """Full (unsharded, CPU) tensors; a collective under FSDP, so call it on every rank."""
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {n: _full(t) for n, t in self.shadow.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the module; differing names: {sorted(missing)}")
        self.updates = int(state["updates"])
        for name, shadow in self.shadow.items():
            _copy_full_into(shadow, state["shadow"][name])


def _full(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of the whole tensor (gathers a sharded DTensor)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu().clone()


def _copy_full_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full tensor into ``target``, which may be a shard (``DTensor``) of it."""
    if hasattr(target, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor  # lazy: ~1 s to import, FSDP runs only

        full = distribute_tensor(full.to(target.to_local().device), target.device_mesh,
                                 target.placements)
    target.copy_(full.to(device=target.device, dtype=target.dtype))
