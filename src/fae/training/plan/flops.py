"""FLOPs of a piece of work, counted by PyTorch's own ``FlopCounterMode`` (never a hand formula).

Run the work on the ``meta`` device and nothing is computed or allocated: every op only
propagates shapes, and the counter adds up the FLOPs of the matrix ops (matmul, convolution,
attention) in the forward and, when the work calls ``backward``, in the backward. Element-wise
ops (norms, activations, the optimiser update) are not counted: they are memory-bound and a few
percent of a transformer's FLOPs. A multiply-add counts as 2 FLOPs.

On the CPU, ``scaled_dot_product_attention`` runs a fused kernel that the counter does not know;
its FLOPs are added here with the counter's own attention formula, so CPU and meta agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils import flop_counter

_aten = torch.ops.aten


def _cpu_flash_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                        **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# the counter hands these shapes in place of tensors
_CPU_ATTENTION = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
}


@dataclass
class FlopCount:
    """Total FLOPs and the FLOPs of each module called during the work (dotted names of the module
    tree, the modules called directly without a dot), each split by op."""

    total: int
    by_module: dict[str, dict[str, int]] = field(default_factory=dict)


class FlopMeter:
    """``with FlopMeter() as meter: ...``; ``meter.snapshot()`` is the count so far (a
    :class:`FlopCount`), so one run can be split into parts (a step's forward and backward)."""

    def __init__(self):
        self.mode = flop_counter.FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)

    def __enter__(self) -> "FlopMeter":
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    def snapshot(self) -> FlopCount:
        counts = {name: {str(op).split(".")[-1]: int(n) for op, n in ops.items()}
                  for name, ops in self.mode.get_flop_counts().items()}
        return FlopCount(int(self.mode.get_total_flops()), counts)


def count_flops(work: Callable[[], Any]) -> tuple[FlopCount, Any]:
    """Run ``work()`` under the FLOP counter; returns (the count, what ``work`` returned)."""
    with FlopMeter() as meter:
        result = work()
    return meter.snapshot(), result


def difference(after: FlopCount, before: FlopCount) -> FlopCount:
    """The FLOPs counted between two snapshots of one meter."""
    modules = {}
    for name, ops in after.by_module.items():
        old = before.by_module.get(name, {})
        modules[name] = {op: n - old.get(op, 0) for op, n in ops.items() if n - old.get(op, 0)}
    return FlopCount(after.total - before.total, {k: v for k, v in modules.items() if v})


def add(a: FlopCount, b: FlopCount) -> FlopCount:
    modules = {name: dict(ops) for name, ops in a.by_module.items()}
    for name, ops in b.by_module.items():
        for op, n in ops.items():
            modules.setdefault(name, {})[op] = modules.get(name, {}).get(op, 0) + n
    return FlopCount(a.total + b.total, modules)
