"""``fae plan``: what a stage config costs before it runs (parameters, FLOPs, memory, time).

Everything is built on the ``meta`` device (no weights, no memory) from the stage's own code:
``build_models`` for the trainable modules, ``synthetic_setup`` for the frozen helpers with random
weights, ``synthetic_batch`` for a batch shaped as the loader's, ``loss`` for the step. FLOPs
come from PyTorch's counter (``flops.py``), activations from a reduced-depth run on fake CPU
tensors (``memory.py``), time from the FLOPs at a measured or assumed MFU (``hardware.py``), GPU-hours
from the paper's training lengths (``milestones.py``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from fae.data.imagefolder import LOADER_RATE, workers_needed
from fae.training.phases import resolve_phases
from fae.training.plan.flops import FlopCount, FlopMeter, add, difference
from fae.training.plan.hardware import GPUS, utilisation
from fae.training.plan.memory import Activations, StateBytes, measure_activations, state_bytes
from fae.training.plan.milestones import paper_milestones
from fae.training.stage import Phase, Stage


@dataclass
class Plan:
    """What ``fae plan`` prints (``--json``: this, as one object; FLOPs in FLOPs, memory in bytes)."""

    stage: str
    kind: str | None
    gpu: str
    gpus: int
    precision: str
    global_batch: int
    grad_accum: int
    micro_batch: float
    parameters: dict[str, dict[str, Any]]
    flops: dict[str, Any]
    memory: dict[str, Any]
    time: dict[str, Any]
    loader: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"units": {"flops": "FLOP", "memory": "bytes", "time": "seconds, hours where a key says so"},
                **asdict(self)}


# ---------------------------------------------------------------- the step, run on any device

def run_step(stage: Stage, models: dict[str, nn.Module], phases: list[Phase], batch: Any,
             after_forward: Callable[[], None] | None = None,
             after_backward: Callable[[], None] | None = None) -> None:
    """Every phase of one training step on ``batch``, as the engine runs it: each phase's
    modules trainable, the others frozen, at a step where every phase is active (GAN included).
    The callbacks run after each phase's loss and after its backward."""
    step = max(p.start_step for p in phases)
    flags = {id(p): p.requires_grad for m in models.values() for p in m.parameters()}
    try:
        for phase in phases:
            for name, module in models.items():
                for p in module.parameters():
                    p.requires_grad_(flags[id(p)] and name in phase.modules)
            loss, _ = stage.loss(phase.name, batch, models, step)
            if after_forward:
                after_forward()
            loss.float().backward()
            if after_backward:
                after_backward()
    finally:
        for module in models.values():
            for p in module.parameters():
                p.requires_grad_(flags[id(p)])


# ---------------------------------------------------------------- the plan

def plan_stage(stage: Stage, gpus: int = 8, gpu: str = "h100-80gb", measure: bool = True) -> Plan:
    """The plan of ``stage`` (its config as given) on ``gpus`` GPUs of kind ``gpu``.

    ``measure``: measure activations on the CPU (seconds to a minute); without it the memory
    figures exclude activations and say so.
    """
    cfg = stage.config.train
    hardware = GPUS[gpu]
    models = stage.build_models("meta")
    helpers = stage.synthetic_setup("meta")
    phases = resolve_phases(stage.phases(), list(models))
    kind = getattr(stage.config, "kind", None) if stage.name == "generator" else None
    precision = "bf16" if cfg.precision in ("auto", "bf16") else "fp32"
    micro = cfg.batch_size / (gpus * cfg.grad_accum)
    notes = []
    if cfg.batch_size % (gpus * cfg.grad_accum):
        notes.append(f"train.batch_size {cfg.batch_size} does not split over {gpus} GPUs x grad_accum "
                     f"{cfg.grad_accum}: `fae train` would refuse it")

    flops = _flops(stage, models, helpers, phases)
    params = _parameters(models, helpers, flops["by_module"])
    activations = _activations(stage, phases, precision) if measure else None
    memory = _memory(stage, models, params, cfg, gpus, micro, hardware, activations)
    time = _time(stage.name, kind, flops, hardware, gpus, cfg.batch_size, gpu)
    plan = Plan(stage.name, kind, gpu, gpus, precision, cfg.batch_size, cfg.grad_accum, micro, params,
                flops, memory, time, notes=notes)
    plan.loader = _loader(stage, time, gpus)
    return plan


def _flops(stage: Stage, models, helpers, phases) -> dict[str, Any]:
    batch = stage.synthetic_batch(1, "meta")
    forward, marks = FlopCount(0), [FlopCount(0)]
    with FlopMeter() as meter:  # one run: the forward is what each phase counts before its backward
        run_step(stage, models, phases, batch, after_forward=lambda: marks.append(meter.snapshot()),
                 after_backward=lambda: marks.append(meter.snapshot()))
        train = meter.snapshot()
    for start, end in zip(marks[0::2], marks[1::2]):
        forward = add(forward, difference(end, start))
    out = {"forward_per_image": forward.total, "train_step_per_image": train.total,
           "by_module": {name: sum(ops.values()) for name, ops in forward.by_module.items()
                         if name != "Global" and "." not in name},  # top-level modules, forward
           "method": "torch.utils.flop_counter.FlopCounterMode on the meta device at batch 1 (matmul, "
                     "convolution and attention FLOPs; a multiply-add = 2; element-wise ops not counted)"}
    passes = stage.sampling_passes()
    if passes is not None:
        network_forward = forward.total  # the generator step's forward is one network pass
        out.update(sampling_passes=passes, sample_per_image=passes * network_forward)
    return out


def _parameters(models, helpers, by_module: dict[str, int]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, module in models.items():
        params = list(module.parameters())
        out[name] = {"trainable": sum(p.numel() for p in params if p.requires_grad),
                     "frozen": sum(p.numel() for p in params if not p.requires_grad), "in_step": True}
    for name, module in helpers.items():
        if name in out:
            name = f"{name} (frozen helper)"
        called = {type(m).__name__ for m in module.modules()} & set(by_module)  # its own or its parts
        out[name] = {"trainable": 0, "frozen": sum(p.numel() for p in module.parameters()),
                     "in_step": any(by_module[c] > 0 for c in called)}
    return out


def _activations(stage: Stage, phases, precision: str) -> Activations:
    def build():
        models = stage.build_models("meta")
        helpers = stage.synthetic_setup("meta")

        def step(real, micro):
            batch = stage.synthetic_batch(micro, "cpu")
            run_step(stage, {n: real[n] for n in models}, phases, batch)

        return {**models, **{f"frozen:{n}": m for n, m in helpers.items()}}, step

    return measure_activations(build, torch.bfloat16 if precision == "bf16" else None)


def _memory(stage, models, params, cfg, gpus, micro, hardware, activations: Activations | None) -> dict[str, Any]:
    frozen_in_step = sum(p["frozen"] for p in params.values() if p["in_step"])
    ema = stage.ema_modules() if cfg.ema_decay is not None else []
    act = activations.at(max(1, math.ceil(micro))) if activations is not None else 0
    out: dict[str, Any] = {"usable_per_gpu": hardware.usable_memory}
    for mode in ("ddp", "fsdp"):
        state = state_bytes(models, frozen_in_step, ema, mode, gpus)
        total = state.total + act
        best = _largest_micro(state, activations, hardware.usable_memory)
        out[mode] = {**asdict(state), "state_total": state.total, "activations": act, "total": total,
                     "fits": total <= hardware.usable_memory, "max_micro_batch": best,
                     "grad_accum_needed": _accum(cfg.batch_size, gpus, best)}
    if activations is not None:
        out["activations"] = {"fixed": activations.fixed, "per_sample": activations.per_sample,
                              "depths": activations.depths, "method": activations.method}
    else:
        out["activations"] = {"method": "not measured (--no-measure): totals exclude activations"}
    return out


def _largest_micro(state: StateBytes, activations: Activations | None, usable: int) -> int | None:
    """The largest micro-batch whose step fits ``usable`` bytes (None: unknown or not even 1)."""
    if activations is None or activations.per_sample <= 0:
        return None
    room = usable - state.total - max(0, activations.fixed)
    return int(room // activations.per_sample) if room >= activations.per_sample else None


def _accum(batch: int, gpus: int, micro: int | None) -> int | None:
    """The smallest grad_accum with batch = gpus x accum x m and m <= ``micro``."""
    if micro is None:
        return None
    for accum in range(1, batch + 1):
        if batch % (gpus * accum) == 0 and batch // (gpus * accum) <= micro:
            return accum
    return None


def _time(stage: str, kind, flops, hardware, gpus: int, batch: int, gpu: str) -> dict[str, Any]:
    mfu = utilisation(gpu, stage)
    per_gpu = hardware.bf16_flops * mfu.mfu  # model FLOP/s one GPU sustains
    images_per_s = gpus * per_gpu / flops["train_step_per_image"]
    out = {"mfu": mfu.mfu, "mfu_source": mfu.source, "peak_flops_per_gpu": hardware.bf16_flops,
           "step_seconds": batch / images_per_s, "images_per_s": images_per_s, "milestones": []}
    for label, images in paper_milestones(stage, kind):
        hours = images / images_per_s / 3600
        out["milestones"].append({"label": label, "images": images, "wall_hours": hours,
                                  "gpu_hours": hours * gpus})
    if "sample_per_image" in flops:
        out["samples_per_s"] = gpus * per_gpu / flops["sample_per_image"]
        out["hours_50k_samples"] = 50_000 / out["samples_per_s"] / 3600
    return out


def _loader(stage: Stage, time: dict[str, Any], gpus: int) -> dict[str, Any] | None:
    """Loader workers each GPU needs when the step reads and decodes images (none for caches)."""
    data = getattr(stage.config, "data", None)
    if getattr(data, "name", None) not in ("imagefolder", "folder", "captions", "webdataset"):
        return None
    if getattr(stage.config, "cache_tokens", False):
        return None
    per_gpu = time["images_per_s"] / gpus
    return {"images_per_s_per_gpu": per_gpu, "workers_per_gpu": workers_needed(per_gpu),
            "per_worker_rate": LOADER_RATE.images_per_s, "measured": LOADER_RATE.source}
