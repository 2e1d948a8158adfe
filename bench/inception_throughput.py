"""Images/s of the FID Inception feature path (resize to 299 + InceptionV3 pool and spatial features).

Measures ``fae.evaluation.inception.InceptionFeatures`` on uint8 256x256 inputs (the ADM sample size)
over batch sizes, memory formats and thread counts, so the demo and CI can budget sample counts.

    .venv/bin/python bench/inception_throughput.py                 # defaults: CPU, a short sweep
    .venv/bin/python bench/inception_throughput.py --batch-sizes 16 64 --threads 4 --device cuda
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from fae.evaluation.inception import InceptionFeatures


def measure(net: InceptionFeatures, batch_size: int, size: int, iters: int, device: str) -> float:
    """Images per second over ``iters`` timed batches, after one warm-up batch."""
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    net(images)  # warm-up (TorchScript profiling runs, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        net(images)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch_size * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (resized to 299)")
    parser.add_argument("--iters", type=int, default=2, help="timed batches per setting")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for channels_last in (True, False):
            net = InceptionFeatures(device=args.device, channels_last=channels_last)
            for batch_size in args.batch_sizes:
                ips = measure(net, batch_size, args.size, args.iters, args.device)
                rows.append({"device": args.device, "threads": threads, "channels_last": channels_last,
                             "batch_size": batch_size, "images_per_s": round(ips, 2)})
                print(f"threads={threads} channels_last={channels_last!s:5} batch={batch_size:3d}: "
                      f"{ips:8.2f} img/s  (50K samples: {50_000 / ips / 60:.1f} min)", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
