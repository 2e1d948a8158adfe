"""Generator throughput on this machine: ours versus diffusers' DiTTransformer2DModel.

Measures, for a DiT-B-sized model (12 x 768, 12 heads, patch 1) on a 16x16x32 latent:
  * training images/s: forward + backward + AdamW step on a batch;
  * sampling images/s: forward passes under inference mode, reported per network evaluation and
    for a 250-step Euler sampler without CFG (250 evaluations per image);
  * achieved FLOP/s (from the model's FLOP estimate; training = 3x forward) as a fraction of this
    machine's measured fp32 matmul peak;
and the ratio ours / diffusers for each, all in the same run.

    .venv/bin/python bench/generator_throughput.py [--train-batch 4] [--sample-batch 8] [--iters 3] [--compile]
"""
from __future__ import annotations

import argparse
import time

import torch

from fae.generation import GeneratorConfig, build_generator


def matmul_peak(size: int = 2048, iters: int = 10) -> float:
    """Measured fp32 matmul FLOP/s (best of ``iters``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def ours(size: str, channels: int, latent: int, patch: int):
    model = build_generator(GeneratorConfig(size=size, style="sit", patch_size=patch,
                                            latent_channels=channels, latent_size=latent))
    return model, lambda z, t, y: model(z, t, y)


def diffusers_dit(reference, channels: int, latent: int, patch: int):
    from diffusers import DiTTransformer2DModel

    cfg = reference.config
    model = DiTTransformer2DModel(num_attention_heads=cfg.heads, attention_head_dim=cfg.dim // cfg.heads,
                                  in_channels=channels, out_channels=channels, num_layers=cfg.depth,
                                  sample_size=latent, patch_size=patch, num_embeds_ada_norm=1000)
    # diffusers' timesteps are on a 0..1000 scale; ours in [0, 1].
    return model, lambda z, t, y: model(z, timestep=t * 1000, class_labels=y, return_dict=False)[0]


def step_functions(model, call, batch_train: int, batch_sample: int, shape) -> dict:
    """Closures running one training step and one inference forward for ``model``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    z, t, y = torch.randn(batch_train, *shape), torch.rand(batch_train), torch.randint(0, 1000, (batch_train,))
    zs, ts, ys = (torch.randn(batch_sample, *shape), torch.rand(batch_sample),
                  torch.randint(0, 1000, (batch_sample,)))

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        (call(z, t, y) - z).square().mean().backward()
        opt.step()

    def eval_step():
        model.eval()
        with torch.inference_mode():
            call(zs, ts, ys)

    return {"train": (train_step, batch_train), "eval": (eval_step, batch_sample)}


def interleaved(rows: dict[str, dict], iters: int) -> dict[str, dict[str, float]]:
    """images/s per row and kind: the models take turns call by call (after one warm-up call
    each), so load from other users of a shared machine hits them alike; median of ``iters``."""
    times: dict[str, dict[str, list[float]]] = {name: {"train": [], "eval": []} for name in rows}
    for kind in ("train", "eval"):
        for name in rows:
            rows[name][kind][0]()  # warm-up (and compilation)
        for _ in range(iters):
            for name, steps in rows.items():
                start = time.perf_counter()
                steps[kind][0]()
                times[name][kind].append(time.perf_counter() - start)
    return {name: {f"{kind}_img_s": rows[name][kind][1] / sorted(ts)[len(ts) // 2]
                   for kind, ts in kinds.items()} for name, kinds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="B", choices=["S", "B", "L", "XL"])
    parser.add_argument("--patch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--sample-batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--sampler-steps", type=int, default=250)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    args = parser.parse_args()
    torch.manual_seed(0)

    peak = matmul_peak()
    shape = (args.channels, args.latent, args.latent)
    model, call = ours(args.size, args.channels, args.latent, args.patch)
    flops = model.flops_per_sample()
    reference, ref_call = diffusers_dit(model, args.channels, args.latent, args.patch)
    print(f"threads {torch.get_num_threads()}  size {args.size}/{args.patch} on {args.channels}x{args.latent}x"
          f"{args.latent}  forward {flops / 1e9:.1f} GFLOP/img  params ours {model.num_params() / 1e6:.1f}M "
          f"diffusers {sum(p.numel() for p in reference.parameters()) / 1e6:.1f}M")
    rows = {"diffusers DiT": step_functions(reference, ref_call, args.train_batch, args.sample_batch, shape),
            "ours (eager)": step_functions(model, call, args.train_batch, args.sample_batch, shape)}
    if args.compile:
        compiled = torch.compile(model)
        rows["ours (compile)"] = step_functions(model, lambda z, t, y: compiled(z, t, y), args.train_batch,
                                                args.sample_batch, shape)
    rows = interleaved(rows, args.iters)
    peak = max(peak, matmul_peak())  # the machine may be shared: keep the better measurement
    print_table(rows, flops, peak, args.sampler_steps)


def print_table(rows: dict[str, dict[str, float]], flops: float, peak: float, steps: int) -> None:
    base = rows["diffusers DiT"]
    print(f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (best of start and end); MFU = achieved / peak")
    print(f"{'model':<16} {'train img/s':>12} {'train MFU':>10} {'x diffusers':>12} "
          f"{'eval img/s':>11} {'eval MFU':>9} {'x diffusers':>12} {f'{steps}-step img/s':>15}")
    for name, r in rows.items():
        train_mfu = r["train_img_s"] * 3 * flops / peak
        eval_mfu = r["eval_img_s"] * flops / peak
        print(f"{name:<16} {r['train_img_s']:>12.3f} {train_mfu:>10.1%} "
              f"{r['train_img_s'] / base['train_img_s']:>12.2f} {r['eval_img_s']:>11.2f} {eval_mfu:>9.1%} "
              f"{r['eval_img_s'] / base['eval_img_s']:>12.2f} {r['eval_img_s'] / steps:>15.4f}")


if __name__ == "__main__":
    main()
