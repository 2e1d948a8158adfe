"""The README's table of the paper recipes' plans: ``fae plan`` of every shipped imagenet256/ stage
config on one GPU kind, as markdown.

    python bench/plan_table.py [--gpus 8] [--gpu h100-80gb] [--json-dir DIR]

Each row is one ``fae plan --json`` (activations measured), so the whole table takes a few minutes
on two CPU cores. ``--json-dir`` keeps the JSON of each plan.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RECIPES = [("fae_dinov2g", None), ("fae_siglip2g", None), ("pixel_decoder_vitl", None),
           ("pixel_decoder_vitl_ii", None), ("sit_xl1", None), ("lightningdit_xl1", None),
           ("lightningdit_xl1", "sample_cfg"), ("mmdit_t2i", None), ("starflow_fae", None),
           ("starflow_sdvae", None)]
GIB = 1024 ** 3


def plan(recipe: str, sampling: str | None, gpus: int, gpu: str) -> dict:
    command = [sys.executable, "-m", "fae", "plan", "--config", f"imagenet256/{recipe}.yaml",
               "--gpus", str(gpus), "--gpu", gpu, "--json"]
    if sampling:
        command += ["--sampling", f"imagenet256/{sampling}.yaml"]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def row(name: str, p: dict) -> str:
    params = p["parameters"]
    trainable = sum(v["trainable"] for v in params.values()) / 1e6
    frozen = sum(v["frozen"] for v in params.values() if v["in_step"]) / 1e6
    ddp, fsdp, time = p["memory"]["ddp"], p["memory"]["fsdp"], p["time"]
    fits = lambda m: f"{m['total'] / GIB:.0f}" + ("" if m["fits"] else " ✗")  # noqa: E731
    best = f"{ddp['max_micro_batch']} / {ddp['grad_accum_needed']}" if ddp["max_micro_batch"] else "-"
    milestones = "; ".join(f"{m['label'].replace('paper ', '').replace('paper: ', '')}: "
                           f"{m['gpu_hours']:,.0f}" for m in time["milestones"])
    sample = f"{p['flops']['sample_per_image'] / 1e12:.0f}" if "sample_per_image" in p["flops"] else "-"
    return (f"| {name} | {trainable:.1f}M / {frozen:.0f}M | {p['flops']['train_step_per_image'] / 1e9:.0f} | "
            f"{sample} | {p['micro_batch']:g} | {fits(ddp)} / {fits(fsdp)} | {best} | "
            f"{time['images_per_s']:,.0f} | {milestones} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu", default="h100-80gb")
    parser.add_argument("--json-dir", type=Path)
    args = parser.parse_args()
    print("| recipe | params trainable / frozen in step | train GFLOP/img | sample TFLOP | micro-batch | "
          "GiB/GPU DDP / FSDP2 | max micro (DDP) / accum | images/s | GPU-hours to the paper's milestones |")
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe, sampling in RECIPES:
        p = plan(recipe, sampling, args.gpus, args.gpu)
        name = recipe + (f" + {sampling}" if sampling else "")
        if args.json_dir:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            (args.json_dir / f"{name.replace(' + ', '+')}.json").write_text(json.dumps(p, indent=1))
        print(row(name, p), flush=True)


if __name__ == "__main__":
    main()
