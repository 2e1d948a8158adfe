"""Full-shape rehearsal on CPU of every paper recipe (``imagenet256/``), chained as a user
runs them: fae_dinov2g -> pixel_decoder_vitl (Ib) -> pixel_decoder_vitl_ii (II) -> cache_latents
(``fae cache-latents``: labelled, and captioned with T5-XL embeddings) -> sit_xl1 / lightningdit_xl1 /
starflow_fae / mmdit_t2i -> sample_cfg (``fae sample`` with the paper's piecewise CFG); fae_siglip2g
alone; starflow_sdvae on a 4x32x32 cache of random latents (fae has no SD-VAE).

    .venv/bin/python bench/rehearse.py RECIPE|all [--depth N|full] [--out DIR] [--keep]

Real modules at full width and full input / latent shapes (DINOv2-g/14 at 224 px, SigLIP2-g at
256 px, 16x16x32 latents, 256 px images), random weights (``weights=random``), 2 training steps at
global batch 2 in bf16 autocast, a bitwise resume check, the export reloaded, 2 samples decoded to
256 px images. ``--depth N`` caps every stack at N blocks (generator, decoders, backbone, T5);
``--depth full`` (the bench: minutes per recipe on 2 cores) keeps the paper's depths except where
the training state (20 bytes per trained parameter) exceeds 70% of RAM, or two checkpoints
(16 bytes per trained parameter each) exceed 80% of the free disk: there the deepest depth
that fits is used and the table says so. ``--precision fp32`` trains without autocast: on CPUs
without native bf16 (AVX512-BF16 / AMX) bf16 matmuls run 10-100x slower than fp32 (measured on the
2-core AMD EPYC dev machine: 0.1-1 GFLOP/s vs 17 GFLOP/s per core), so a full-depth bf16 bench
takes hours there; bf16 at a small depth still covers the autocast dtype paths. A recipe's upstream steps run first (RECIPE=sit_xl1 also
trains fae_dinov2g, the two pixel decoders and writes the caches). Each step runs in its own
process, so the peak RSS is its own. Prints a table and writes ``DIR/rehearse.json``; the work
folder (images, runs, caches, samples) is ``DIR/work``, deleted at the end unless ``--keep``.
The recipe step itself is bench/rehearse_recipes.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from fae.backbones.weights import env_var_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rehearse_recipes as recipes  # noqa: E402  (bench/ is not a package)

# Each step and the steps it needs, in an order that satisfies them.
NEEDS = {"fae_dinov2g": [], "fae_siglip2g": [], "pixel_decoder_vitl": [],
         "pixel_decoder_vitl_ii": ["fae_dinov2g", "pixel_decoder_vitl"],
         "cache_latents": ["pixel_decoder_vitl_ii"],
         "sit_xl1": ["cache_latents"], "lightningdit_xl1": ["cache_latents"], "starflow_fae": ["cache_latents"],
         "mmdit_t2i": ["cache_latents"], "starflow_sdvae": [], "sample_cfg": ["lightningdit_xl1"]}
RECIPES = [step for step in NEEDS if step != "cache_latents"]


def closure(wanted: list[str]) -> list[str]:
    """``wanted`` with every step they need, in NEEDS order."""
    keep: set[str] = set()

    def add(step: str) -> None:
        if step not in keep:
            keep.add(step)
            for need in NEEDS[step]:
                add(need)

    for step in wanted:
        add(step)
    return [step for step in NEEDS if step in keep]


def backbone_env(depth: int | None) -> dict[str, str]:
    """$FAE_WEIGHTS_<NAME>=random[:N] for the paper's backbones: verbs that look the backbone up
    themselves (``fae cache-latents`` through ``FAE.from_pretrained``) get the same random network."""
    value = recipes.random_weights(depth)
    return {env_var_for(name): value for name in set(recipes.BACKBONES.values())}


def run_step(step: str, work: Path, depth: int | None, precision: str) -> dict:
    """One step in a fresh process (its own peak RSS); its result JSON, or the failure."""
    result = work / "results" / f"{step}.json"
    command = [sys.executable, __file__, "--worker", step, "--work", str(work),
               "--depth", "full" if depth is None else str(depth), "--precision", precision]
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **backbone_env(depth)}, capture_output=True, text=True)
    if done.returncode != 0 or not result.is_file():
        for checkpoints in (work / "runs" / step).glob("*/checkpoints"):  # tens of GB at full depth
            shutil.rmtree(checkpoints)
        log = work / "results" / f"{step}.log"
        log.write_text(done.stdout + done.stderr)
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        if done.returncode < 0:  # no traceback: the last line would be whatever it printed before
            tail = [f"killed by signal {-done.returncode}"
                    + (" (SIGKILL: out of memory? see dmesg)" if done.returncode == -9 else "")]
        return {"recipe": step, "failed": tail[0], "log": str(log), "wall_s": time.perf_counter() - start}
    return json.loads(result.read_text())


def worker(step: str, work: Path, depth: int | None, precision: str) -> None:
    """The child process: rehearse ``step`` and write its result JSON."""
    torch.set_num_threads(os.cpu_count() or 1)
    result = recipes.timed(step, recipes.Work(work, precision), depth)
    (work / "results").mkdir(parents=True, exist_ok=True)
    (work / "results" / f"{step}.json").write_text(json.dumps(result, indent=1, default=str))


# ------------------------------------------------------------------------------------ the report


def verdict(row: dict) -> str:
    if "failed" in row:
        return "FAIL: " + row["failed"][:60]
    checks = [row.get(k) for k in ("resume_bitwise", "losses_finite", "export_same_output", "samples_ok")
              if k in row]
    return "ok" if all(checks) else "FAIL: " + ", ".join(k for k in ("resume_bitwise", "losses_finite",
                                                                    "export_same_output", "samples_ok")
                                                        if row.get(k) is False)


def format_table(rows: list[dict]) -> str:
    """Step | depth | wall | peak RSS | checkpoint | trained / frozen params | resume | verdict."""
    head = f"{'step':<22} {'depth':>5} {'wall s':>7} {'RSS GiB':>8} {'ckpt MiB':>9} {'trained M':>10} " \
           f"{'frozen M':>9} {'resume':>7}  verdict"
    lines = [head, "-" * len(head)]
    for row in rows:
        trained = sum(row.get("trained_params", {}).values()) / 1e6
        depth = row.get("depth", "")
        lines.append(f"{row['recipe']:<22} {'full' if depth is None else depth:>5} {row['wall_s']:>7.1f} "
                     f"{row.get('peak_rss_gib', float('nan')):>8.2f} {row.get('checkpoint_mib', float('nan')):>9.1f} "
                     f"{trained:>10.1f} {row.get('frozen_params', 0) / 1e6:>9.1f} "
                     f"{str(row.get('resume_bitwise', '-')):>7}  {verdict(row)}")
    notes = [f"{row['recipe']}: {row['depth_note']}" for row in rows if row.get("depth_note")]
    return "\n".join(lines + notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", help="a file stem of imagenet256/, or 'all'")
    parser.add_argument("--depth", default="2", help="blocks per stack (N), or 'full' (default 2)")
    parser.add_argument("--out", default="runs/rehearse", help="folder of rehearse.json and work/")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="training autocast (default bf16, the recipes' GPU setting; see above)")
    parser.add_argument("--keep", action="store_true", help="keep DIR/work (runs, exports, caches, samples)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    depth = None if args.depth == "full" else int(args.depth)
    if args.worker:
        worker(args.worker, Path(args.work), depth, args.precision)
        return 0
    if args.recipe != "all" and args.recipe not in RECIPES:
        parser.error(f"unknown recipe '{args.recipe}'; choose one of: all, {', '.join(RECIPES)}")
    out = Path(args.out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    # at full depth a DINOv2-g forward is ~0.6 TFLOP an image (~20 s on 2 cores): the smallest
    # folder that still gives the generators batches of 2 (flipped copies double the cache)
    recipes.write_images(work / "imagenet", **(dict(classes=2, train=2, val=1) if depth is None else {}))
    (work / "results").mkdir(parents=True)
    rows, failed = [], set()
    for step in closure(RECIPES if args.recipe == "all" else [args.recipe]):
        if failed & set(closure(NEEDS[step])):
            failed.add(step)
            rows.append({"recipe": step, "failed": "skipped: a step it needs failed", "wall_s": 0.0})
            continue
        print(f"rehearsing {step} ...", flush=True)
        rows.append(run_step(step, work.resolve(), depth, args.precision))
        print("\n".join(format_table(rows[-1:]).splitlines()[2:]), flush=True)  # its row (and depth note)
        if verdict(rows[-1]) != "ok":
            failed.add(step)
    print(format_table(rows))
    (out / "rehearse.json").write_text(json.dumps({"depth": args.depth, "steps": rows}, indent=1, default=str))
    print(f"results: {(out / 'rehearse.json').resolve()}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(verdict(row) == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
