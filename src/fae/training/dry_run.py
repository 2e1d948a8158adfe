"""``fae train <stage> --dry-run``: validate, build on ``meta``, count parameters, and stop."""
from __future__ import annotations

import os
from pathlib import Path

from fae.training.checkpoint import CheckpointManager
from fae.training.phases import resolve_phases
from fae.training.stage import Stage


def _count(module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def describe_stage(stage: Stage, echo: bool = True) -> dict:
    """Parameter counts per module on the ``meta`` device, phases, run folder and the stage's own
    description. Needs no weights, data or network. Returns what it prints."""
    cfg = stage.config.train
    models = stage.build_models("meta")
    counts = {name: _count(m) for name, m in models.items()}
    phases = resolve_phases(stage.phases(), list(models))
    run_dir = Path(cfg.run_dir)
    steps = CheckpointManager(run_dir / "checkpoints").steps()
    world = int(os.environ.get("WORLD_SIZE", 1))
    lines = [f"stage: {stage.name}"]
    for name, (total, trainable) in counts.items():
        lines.append(f"  {name}: {total:,} parameters ({_human(total)}), {trainable:,} trainable")
    total = sum(c[0] for c in counts.values())
    lines.append(f"  total: {total:,} parameters ({_human(total)})")
    for p in phases:
        lines.append(f"phase {p.name}: trains {', '.join(p.modules)}; lr {p.optim.lr:g} "
                     f"({p.optim.schedule}, {p.optim.warmup_steps} warm-up steps) from step "
                     f"{p.start_step}")
    lines.append(f"steps: {cfg.steps}, global batch {cfg.batch_size} = {world} rank(s) x "
                 f"{cfg.grad_accum} micro-batch(es) x {cfg.batch_size / (world * cfg.grad_accum):g}")
    lines.append(f"EMA: {', '.join(stage.ema_modules()) or 'none'} "
                 f"(decay {cfg.ema_decay})" if cfg.ema_decay is not None else "EMA: disabled")
    state = f"would resume from step {steps[-1]}" if steps else "would start from step 0"
    lines.append(f"run folder: {run_dir.resolve()} ({state})")
    for key, value in stage.describe().items():
        lines.append(f"{key}: {value}")
    if echo:
        print("\n".join(lines), flush=True)
    return {"stage": stage.name, "parameters": {n: c[0] for n, c in counts.items()},
            "trainable": {n: c[1] for n, c in counts.items()}, "total_parameters": total,
            "phases": [p.name for p in phases], "run_dir": str(run_dir),
            "resume_step": steps[-1] if steps else None, "lines": lines}
