"""Wrapping trainable modules for DDP / FSDP2 / torch.compile, and the one helper that unwraps them.

``unwrap`` walks the wrapper objects themselves (``OptimizedModule._orig_mod``,
``DistributedDataParallel.module``); it never edits state-dict key strings. FSDP2's
``fully_shard`` changes a module in place (its parameters become sharded ``DTensor``s), so an
FSDP module is its own unwrapped module; use :mod:`fae.training.checkpoint` to read or write its
full (unsharded) state.
"""
from __future__ import annotations

import sys
from typing import Literal

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from fae import distributed as dist_utils


def _optimized_module_type() -> type | None:
    """``torch.compile``'s wrapper class, or None when dynamo was never imported (then nothing
    can be compiled; importing it just to check would cost seconds)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside any stack of compile / DDP wrappers."""
    compiled = _optimized_module_type()
    while True:
        if compiled is not None and isinstance(module, compiled):
            module = module._orig_mod
        elif isinstance(module, DistributedDataParallel):
            module = module.module
        else:
            return module


def ddp_of(module: nn.Module) -> DistributedDataParallel | None:
    """The DDP wrapper inside any compile wrappers, or None."""
    compiled = _optimized_module_type()
    while compiled is not None and isinstance(module, compiled):
        module = module._orig_mod
    return module if isinstance(module, DistributedDataParallel) else None


def is_fsdp(module: nn.Module) -> bool:
    """True when ``fully_shard`` was applied to ``module`` (after unwrapping)."""
    return isinstance(unwrap(module), FSDPModule)


def wrap(module: nn.Module, device: torch.device, mode: Literal["ddp", "fsdp"],
         compile: bool = False, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap one trainable module for this process group.

    Args:
        module: the module, already on ``device`` with its trainable parameters'
            ``requires_grad`` set as they should be synchronised.
        device: this rank's device.
        mode: "ddp" (replicated weights, averaged gradients) or "fsdp" (FSDP2 ``fully_shard``:
            parameters, gradients and optimiser state sharded across ranks). Single process: no
            wrapper at all.
        compile: apply ``torch.compile`` on top.
        find_unused_parameters: passed to DDP, for modules whose forward skips some parameters.
    """
    if dist_utils.world_size() > 1 and any(p.requires_grad for p in module.parameters()):
        if mode == "fsdp":
            _fully_shard(module)
        else:
            ids = [device.index] if device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids,
                                             find_unused_parameters=find_unused_parameters)
    if compile:
        module = torch.compile(module)
    return module


def _fully_shard(module: nn.Module) -> None:
    """FSDP2: shard every element of every ``nn.ModuleList`` (transformer blocks) as its own unit,
    then the root, so only one block's full weights are gathered at a time."""
    for child in module.modules():
        if isinstance(child, nn.ModuleList):
            for block in child:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block)
    fully_shard(module)


def reshard(module: nn.Module) -> None:
    """Put FSDP2 modules back into their sharded state. FSDP2 keeps a root module's full weights
    after a forward that has no backward (a frozen use in another phase, evaluation); parameter
    names then map to unsharded tensors. No-op for other modules."""
    for child in unwrap(module).modules():
        if isinstance(child, FSDPModule):
            child.reshard()
