"""The text ``fae plan`` prints (``--json`` prints :meth:`Plan.to_json` instead)."""
from __future__ import annotations

from fae.training.plan.planner import Plan

GIB = 1024 ** 3
STATE_ROWS = (("weights", "weights (fp32)"), ("gradients", "gradients"), ("optimizer", "AdamW moments"),
              ("ema", "EMA"), ("frozen", "frozen helpers in the step"),
              ("buffers", "DDP buckets / FSDP2 gathered blocks"))


def count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def flops(n: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} FLOP"


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def format_plan(plan: Plan, config: str | None = None) -> str:
    what = plan.stage + (f" ({plan.kind})" if plan.kind else "")
    lines = [f"fae plan: {config or '(defaults)'}: stage {what} on {plan.gpus} x {plan.gpu}, {plan.precision}, "
             f"global batch {plan.global_batch} = {plan.gpus} GPU(s) x {plan.grad_accum} accum x "
             f"{plan.micro_batch:g}", ""]
    lines += _parameters(plan) + [""] + _flops(plan) + [""] + _memory(plan) + [""] + _time(plan)
    if plan.loader:
        ld = plan.loader
        lines += ["", f"Data loading: {ld['images_per_s_per_gpu']:.0f} images/s per GPU needs "
                      f"{ld['workers_per_gpu']} loader worker(s) per GPU (train.num_workers) at "
                      f"{ld['per_worker_rate']:.0f} images/s per worker ({ld['measured']})"]
    if plan.notes:
        lines += ["", "Notes:"] + [f"  - {n}" for n in plan.notes]
    return "\n".join(lines)


def _parameters(plan: Plan) -> list[str]:
    lines = [f"{'Parameters':28}{'trainable':>12}{'frozen':>12}  in the step"]
    for name, p in plan.parameters.items():
        lines.append(f"  {name:26}{count(p['trainable']):>12}{count(p['frozen']):>12}  "
                     f"{'yes' if p['in_step'] else 'no'}")
    total_t = sum(p["trainable"] for p in plan.parameters.values())
    total_f = sum(p["frozen"] for p in plan.parameters.values())
    lines.append(f"  {'total':26}{count(total_t):>12}{count(total_f):>12}")
    return lines


def _flops(plan: Plan) -> list[str]:
    f = plan.flops
    ratio = f["train_step_per_image"] / max(1, f["forward_per_image"])
    lines = ["FLOPs per image",
             f"  forward                   {flops(f['forward_per_image'])}",
             f"  training step             {flops(f['train_step_per_image'])} ({ratio:.2f} x forward)"]
    modules = ", ".join(f"{name} {flops(n)}" for name, n in f["by_module"].items())
    lines.append(f"  forward by module: {modules}")
    if "sample_per_image" in f:
        lines.append(f"  per sample at the configured sampler: {flops(f['sample_per_image'])} "
                     f"({f['sampling_passes']:g} network passes)")
    lines.append(f"  ({f['method']})")
    return lines


def _memory(plan: Plan) -> list[str]:
    m = plan.memory
    ddp, fsdp = m["ddp"], m["fsdp"]
    lines = [f"{'Memory per GPU (GiB)':38}{'DDP':>9}{'FSDP2':>9}"]
    for key, label in STATE_ROWS:
        lines.append(f"  {label:36}{gib(ddp[key]):>9}{gib(fsdp[key]):>9}")
    lines.append(f"  {'activations at micro-batch ' + str(int(-(-plan.micro_batch // 1))):36}"
                 f"{gib(ddp['activations']):>9}{gib(fsdp['activations']):>9}")
    lines.append(f"  {'total':36}{gib(ddp['total']):>9}{gib(fsdp['total']):>9}   "
                 f"(usable: {gib(m['usable_per_gpu'])} = 90% of the GPU)")
    lines.append(f"  {'fits':36}{'yes' if ddp['fits'] else 'NO':>9}{'yes' if fsdp['fits'] else 'NO':>9}")
    show = lambda v: "-" if v is None else str(v)  # noqa: E731
    lines.append(f"  {'largest micro-batch that fits':36}{show(ddp['max_micro_batch']):>9}"
                 f"{show(fsdp['max_micro_batch']):>9}")
    lines.append(f"  {'train.grad_accum for the global batch':36}{show(ddp['grad_accum_needed']):>9}"
                 f"{show(fsdp['grad_accum_needed']):>9}")
    act = m["activations"]
    if "per_sample" in act:
        lines.append(f"  activations: {gib(act['per_sample'])} GiB per sample + {gib(act['fixed'])} GiB "
                     f"per step; {act['method']}")
    else:
        lines.append(f"  activations: {act['method']}")
    return lines


def _time(plan: Plan) -> list[str]:
    t = plan.time
    lines = [f"Time at {t['mfu']:.0%} MFU ({t['mfu_source']}; peak {flops(t['peak_flops_per_gpu'])}/s bf16 "
             f"per GPU)",
             f"  step {t['step_seconds']:.3g} s, {t['images_per_s']:.4g} images/s on {plan.gpus} GPU(s)"]
    for ms in t["milestones"]:
        lines.append(f"  {ms['label']}: {ms['wall_hours']:.4g} h wall, {ms['gpu_hours']:.4g} GPU-hours")
    if "samples_per_s" in t:
        lines.append(f"  sampling: {t['samples_per_s']:.4g} samples/s; 50K samples (FID) in "
                     f"{t['hours_50k_samples']:.3g} h wall")
    return lines
