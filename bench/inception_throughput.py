"""Images/s of the FID Inception feature path: the plain TorchScript vs the fast path, side by side.

Both paths embed the same uint8 256x256 images (the ADM sample size; resized to 299 inside), in
turns, ``--repeats`` times, so machine noise hits both alike; each row prints the best pass and the
range over passes. It also measures the machine's dense fp32 rate (a large matmul, and a large 3x3
convolution, which oneDNN runs faster than MKL's matmul on some CPUs) and prints each path's
achieved GFLOP/s as a share of both, plus the largest feature deviation of the fast path from the
plain one (max |fast - plain| / max |plain|; the project's budget is 1e-4).

    .venv/bin/python bench/inception_throughput.py                          # CPU, 64 images, batch 16
    .venv/bin/python bench/inception_throughput.py --batch-sizes 8 16 50 --threads 1 2
    .venv/bin/python bench/inception_throughput.py --compile                # + torch.compile'd fast path
    .venv/bin/python bench/inception_throughput.py --device cuda --images 512 --batch-sizes 64
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fae.evaluation.inception import INPUT_SIZE, InceptionFeatures
from fae.evaluation.inception_net import InceptionV3

Features = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_rate(run: Callable[[], object], flop: float, repeats: int, device: str) -> float:
    """Best GFLOP/s of ``run`` (which does ``flop`` operations) over ``repeats`` timed calls."""
    run()  # warm-up: allocator, kernel selection
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        best = max(best, flop / (time.perf_counter() - start) / 1e9)
    return best


def measure_peaks(device: str, repeats: int) -> dict[str, float]:
    """The machine's dense fp32 GFLOP/s: a 4096^3 matmul and a 3x3 conv (256 -> 256 channels, 32 x 32 x 32)."""
    a, b = (torch.randn(4096, 4096, device=device) for _ in range(2))
    x = torch.randn(32, 256, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        matmul = best_rate(lambda: a @ b, 2 * 4096 ** 3, repeats, device)
        conv = best_rate(lambda: F.conv2d(x, w, padding=1), 2 * 32 * 32 * 32 * 256 * 256 * 9, repeats, device)
    return {"matmul_gflops": matmul, "conv3x3_gflops": conv}


def inception_flop() -> float:
    """Multiply-adds x 2 of one 299x299 image through the feature network (convs; no fc head)."""
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += 2 * output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    model = InceptionV3(logits=False).eval()
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    for hook in hooks:
        hook.remove()
    return float(total)


def embed(net: Features, images: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """Features of every image, in batches (the way ``compute_inception_stats`` calls the network)."""
    outs = [net(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return {key: torch.cat([out[key].cpu() for out in outs]) for key in outs[0]}


def timed(net: Features, images: torch.Tensor, batch_size: int, device: str) -> float:
    """Images per second of one pass over ``images``."""
    _sync(device)
    start = time.perf_counter()
    embed(net, images, batch_size)
    _sync(device)
    return len(images) / (time.perf_counter() - start)


def compiled_fast_path(device: str, channels_last: bool, example: torch.Tensor, batch_size: int
                       ) -> tuple[Features, float]:
    """The fast path with its network under ``torch.compile`` (inductor; weights frozen as constants),
    and the seconds its first calls took (compiling, for the full batch and for a partial last one)."""
    import torch._inductor.config as inductor_config  # only for this optional row: importing inductor is slow

    inductor_config.freezing = True  # fold weights into the graph: lets inductor prepack conv weights
    net = InceptionFeatures(device=device, channels_last=channels_last, fast=True)
    object.__setattr__(net, "network", torch.compile(net.network, dynamic=False))
    start = time.perf_counter()
    embed(net, example, batch_size)
    return net, time.perf_counter() - start


def deviation(fast: dict[str, torch.Tensor], plain: dict[str, torch.Tensor], key: str) -> float:
    """max |fast - plain| / max |plain| of one feature kind."""
    return float((fast[key] - plain[key]).abs().max() / plain[key].abs().max())


def compare(paths: dict[str, Features], images: torch.Tensor, batch_size: int, repeats: int, device: str
            ) -> dict[str, list[float]]:
    """img/s of every path over ``repeats`` interleaved passes (after one warm-up pass each)."""
    for net in paths.values():
        embed(net, images[:batch_size], batch_size)
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, net in paths.items():
            rates[name].append(timed(net, images, batch_size, device))
    return rates


def report_rows(rates: dict[str, list[float]], flop: float, peaks: dict[str, float]) -> list[dict]:
    """One row per path: best and range of img/s, ratio to the plain path, GFLOP/s and % of peaks."""
    plain_best = max(rates["plain"])
    rows = []
    for name, values in rates.items():
        best = max(values)
        gflops = best * flop / 1e9
        rows.append({"path": name, "best_img_s": round(best, 2), "min_img_s": round(min(values), 2),
                     "spread_pct": round(100 * (best - min(values)) / best, 1),
                     "ratio_to_plain": round(best / plain_best, 3), "gflops": round(gflops, 1),
                     "pct_matmul_peak": round(100 * gflops / peaks["matmul_gflops"], 1),
                     "pct_conv_peak": round(100 * gflops / peaks["conv3x3_gflops"], 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--images", type=int, default=64, help="images per timed pass")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (resized to 299)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per path (best and range shown)")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--nchw", action="store_true", help="contiguous NCHW instead of channels-last")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(args.device)
    flop = inception_flop()
    channels_last = not args.nchw
    plain = InceptionFeatures(device=args.device, channels_last=channels_last, fast=False)
    fast = InceptionFeatures(device=args.device, channels_last=channels_last, fast=True)
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        peaks = measure_peaks(args.device, args.repeats)
        print(f"threads={threads}: fp32 peak {peaks['matmul_gflops']:.0f} GFLOP/s (4096^3 matmul), "
              f"{peaks['conv3x3_gflops']:.0f} GFLOP/s (3x3 conv); Inception {flop / 1e9:.2f} GFLOP/image",
              flush=True)
        for batch_size in args.batch_sizes:
            paths: dict[str, Features] = {"plain": plain, "fast": fast}
            compile_s = None
            if args.compile:
                paths["compiled"], compile_s = compiled_fast_path(args.device, channels_last, images, batch_size)
            rates = compare(paths, images, batch_size, args.repeats, args.device)
            features = {name: embed(net, images, batch_size) for name, net in paths.items()}
            for row in report_rows(rates, flop, peaks):
                name = row["path"]
                row.update(threads=threads, batch_size=batch_size, device=args.device,
                           pool_deviation=deviation(features[name], features["plain"], "pool"),
                           spatial_deviation=deviation(features[name], features["plain"], "spatial"),
                           compile_s=round(compile_s, 1) if name == "compiled" else None)
                results.append(row)
                print(f"  batch={batch_size:3d} {name:8s} {row['best_img_s']:7.2f} img/s "
                      f"(min {row['min_img_s']:.2f}, spread {row['spread_pct']:.0f}%)  x{row['ratio_to_plain']:.2f} "
                      f"vs plain  {row['gflops']:6.1f} GFLOP/s = {row['pct_matmul_peak']:.0f}% matmul peak, "
                      f"{row['pct_conv_peak']:.0f}% conv peak  deviation pool {row['pool_deviation']:.1e} "
                      f"spatial {row['spatial_deviation']:.1e}"
                      + (f"  compile {compile_s:.0f} s" if name == "compiled" else ""), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
