"""Memory of a training step: the state that lives across steps, by formula, and the activations,
measured.

State (bytes per GPU; parameters are float32 whatever the autocast precision):
- DDP: weights 4 P + gradients 4 P + DDP's gradient buckets 4 P (``gradient_as_bucket_view`` is
  off) + AdamW's two moments 8 P + EMA 4 P_ema, for the P trainable parameters, all replicated;
- FSDP2 (``fully_shard`` per ModuleList element, then the root; no mixed-precision policy, so
  gathered weights are float32): weights, gradients, AdamW and EMA divided by the N GPUs, plus the
  unsharded working set: the root's own parameters, two blocks gathered at a time (the next one
  is prefetched) and one block's unsharded gradients before their reduce-scatter;
- frozen helpers (backbone, perceptual net, FAE) are replicated as they are: 4 bytes a parameter.

Activations are measured, not modelled: :func:`measure_activations` runs micro-batches of 1 and 2
through a reduced-depth copy of the stage on the CPU device (every leaf ``nn.ModuleList`` cut to
one element, then each in turn to two) under the config's autocast, reads the peak of live tensor
bytes created during forward and backward (:class:`LiveBytes`), and scales to full depth and
micro-batch: ``act(b) = fixed_base + sum_i (L_i - 1) * fixed_i + b * (per_sample_base + sum_i (L_i - 1) *
per_sample_i)``, where a layer's fixed part is what it adds whatever the batch (the bf16 copies of
its weights that autocast makes each step).

By default the run uses fake tensors (``FakeTensorMode`` with CPU tensors: every op of the step is
dispatched as on the CPU, autocast included, and produces outputs of the real kernels' shapes and
dtypes, but no arithmetic is done), because bf16 matmuls on a CPU without bf16 units run ~30x
slower than float32 (a reduced SiT-XL step took minutes). ``real=True`` runs the same step on real
CPU tensors; a test checks both give the same bytes. CPU kernels save what GPU kernels save for
backward (the fused attention keeps its log-sum-exp, not the attention matrix), so the figure
carries over; allocator slack and fragmentation on the GPU do not appear in it (``fae plan`` keeps
10% of the GPU's memory in reserve).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

FLOAT32 = 4
ADAMW_STATE = 8  # exp_avg + exp_avg_sq, float32


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode that are still alive, and their peak.

    Every op's new outputs are recorded by storage (views and in-place results share their
    input's, and are not new); after each op the storages that have been freed are dropped.
    Tensors that existed before the mode (weights, optimiser state, gradients allocated up front)
    are not counted.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}  # in-place ops and views allocate nothing
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in inputs:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]


@dataclass
class StateBytes:
    """Bytes per GPU of what lives across steps."""

    weights: int
    gradients: int
    optimizer: int
    ema: int
    frozen: int
    buffers: int  # DDP's gradient buckets, or FSDP's unsharded working set

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.ema + self.frozen + self.buffers


def largest_block(module: nn.Module) -> tuple[int, int]:
    """(parameters of the largest ModuleList element, parameters outside every ModuleList) of a
    trainable module: FSDP2's units as ``fae.training.wrappers`` shards them."""
    in_blocks, largest = set(), 0
    for child in module.modules():
        if isinstance(child, nn.ModuleList):
            for block in child:
                params = [p for p in block.parameters() if p.requires_grad]
                largest = max(largest, sum(p.numel() for p in params))
                in_blocks.update(id(p) for p in params)
    rest = sum(p.numel() for p in module.parameters() if p.requires_grad and id(p) not in in_blocks)
    return largest, rest


def state_bytes(trainable: dict[str, nn.Module], frozen_params: int, ema: list[str], mode: str, gpus: int
                ) -> StateBytes:
    """Per-GPU bytes of weights, gradients, AdamW, EMA and frozen helpers under ``mode``
    ("ddp" or "fsdp") over ``gpus`` (see the module docstring)."""
    counts = {n: sum(p.numel() for p in m.parameters() if p.requires_grad) for n, m in trainable.items()}
    params = sum(counts.values())
    ema_params = sum(counts[n] for n in ema if n in counts)
    if mode == "ddp" or gpus == 1:
        buckets = FLOAT32 * params if gpus > 1 else 0
        return StateBytes(FLOAT32 * params, FLOAT32 * params, ADAMW_STATE * params, FLOAT32 * ema_params,
                          FLOAT32 * frozen_params, buckets)
    working = 0
    for module in trainable.values():
        block, rest = largest_block(module)
        working += FLOAT32 * (rest + 3 * block)  # root + two gathered blocks + one block's gradients
    shard = lambda n: -(-n // gpus)  # noqa: E731 - ceil: every rank holds a whole shard
    return StateBytes(FLOAT32 * shard(params), FLOAT32 * shard(params), ADAMW_STATE * shard(params),
                      FLOAT32 * shard(ema_params), FLOAT32 * frozen_params, working)


# ---------------------------------------------------------------- measured activations

def leaf_lists(modules: dict[str, nn.Module]) -> dict[str, nn.ModuleList]:
    """Every ``nn.ModuleList`` with at least two elements and no ModuleList inside, by dotted name
    (the stacks whose length is the depth: transformer blocks, backbone layers)."""
    found = {}
    for root, module in modules.items():
        for name, child in module.named_modules():
            if isinstance(child, nn.ModuleList) and len(child) > 1 and not any(
                    isinstance(m, nn.ModuleList) for el in child for m in el.modules()):
                found[f"{root}.{name}" if name else root] = child
    return found


def cut(modules: dict[str, nn.Module], depths: dict[str, int]) -> None:
    """Keep the first ``depths[name]`` elements of each named leaf list (in place)."""
    lists = leaf_lists(modules)
    for name, depth in depths.items():
        target = lists[name]
        target._modules = OrderedDict(list(target._modules.items())[:depth])


@dataclass
class Activations:
    """Measured activation bytes: ``fixed + per_sample * micro_batch`` at full depth."""

    fixed: int
    per_sample: int
    depths: dict[str, int]  # the leaf lists scaled, and their full lengths
    method: str

    def at(self, micro_batch: int) -> int:
        return max(0, self.fixed) + self.per_sample * micro_batch


def measure_activations(build: Callable[[], tuple[dict[str, nn.Module], Callable[[dict, int], None]]],
                        autocast: torch.dtype | None, real: bool = False) -> Activations:
    """Peak live bytes of a step of reduced-depth copies, scaled to full depth.

    Args:
        build: returns (the modules on the meta device, trainable and frozen, by name;
            ``step(modules, micro_batch)``, which runs forward and backward of every phase on
            CPU tensors, creating its batch on "cpu"). Called once per measurement.
        autocast: the config's autocast dtype (bf16 on GPU) or None.
        real: real CPU tensors instead of fake ones (see the module docstring).
    """
    modules, _ = build()
    full = {name: len(lst) for name, lst in leaf_lists(modules).items()}
    base = {name: 1 for name in full}

    def peak(depths: dict[str, int], micro: int) -> int:
        mods, step = build()
        cut(mods, depths)
        with contextlib.ExitStack() as stack:
            if not real:
                stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
            on_cpu = {n: _on_cpu(m, real) for n, m in mods.items()}
            if autocast is not None:
                stack.enter_context(torch.autocast("cpu", dtype=autocast))
            meter = stack.enter_context(LiveBytes())
            step(on_cpu, micro)
        return meter.peak

    one, two = peak(base, 1), peak(base, 2)
    per_sample, fixed = two - one, one - (two - one)
    for name, length in full.items():  # a layer adds bytes per sample and per step (weight casts)
        layer_one = peak({**base, name: 2}, 1) - one
        layer_two = peak({**base, name: 2}, 2) - two
        per_sample += (length - 1) * max(0, layer_two - layer_one)
        fixed += (length - 1) * max(0, 2 * layer_one - layer_two)
    method = (f"measured: peak live tensor bytes of forward + backward on the CPU device "
              f"({'real' if real else 'fake'} tensors) at micro-batch 1 and 2 with every stack cut to 1 "
              f"element, then each of {len(full)} stack(s) grown to 2, scaled to full depth "
              f"({', '.join(f'{n} x{d}' for n, d in full.items()) or 'no stacks'})"
              + (f", under {str(autocast).split('.')[-1]} autocast" if autocast is not None else ", float32"))
    return Activations(fixed=fixed, per_sample=per_sample, depths=full, method=method)


def _on_cpu(module: nn.Module, real: bool) -> nn.Module:
    """A meta module on the CPU (in place), with its gradients allocated up front (zeros) so that
    the meter sees activations and transient gradients only. Real tensors get small random
    weights (values do not matter; finite ones keep every code path the same); integer buffers
    (position ids) become aranges."""
    module = module.to_empty(device="cpu")
    if real:
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, 0.02)
            for b in module.buffers():
                if b.is_floating_point():
                    b.normal_(0.0, 0.02)
                elif b.dtype == torch.bool:
                    b.fill_(True)
                else:
                    b.copy_(torch.arange(b.numel()).reshape(b.shape))
    for p in module.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    return module
