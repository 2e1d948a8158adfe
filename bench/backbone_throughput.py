"""Images/s of efficientnet-lite0 at 224 px: our data path + preprocessing vs the bare forward.

    .venv/bin/python bench/backbone_throughput.py [--images 256] [--batch-size 32] [--threads N]

"ours":  Fashion-MNIST uint8 28x28 -> DataLoader -> Backbone.__call__ (uint8 -> float, gray -> RGB,
         antialiased resize to 224, normalise, channels_last) -> forward -> tokens [B, 49, 1280].
"bare":  the same network's ``extract_features`` on pre-made normalised 224 px tensors
         (channels_last, inference_mode) - the floor our pipeline is measured against; once as one
         forward per batch, once in the CPU micro-batches our adapter uses (like for like).
The two are timed alternately, batch by batch, in the same run, so a busy shared machine disturbs
both alike; the paired median ratio is the robust figure. Then a few cheap settings are timed on the bare forward for reference.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from fae.backbones import load_backbone
from fae.data.fashion_mnist import FashionMNIST


def time_bare(net, pixels: torch.Tensor, n_batches: int, mode=torch.inference_mode,
              chunk: int | None = None) -> float:
    """Seconds for ``n_batches`` forwards of the bare network on ready-made inputs
    (optionally in chunks of ``chunk`` images, the micro-batching our adapter does on CPU)."""
    start = time.perf_counter()
    with mode():
        for _ in range(n_batches):
            for part in pixels.split(chunk or len(pixels)):
                net.extract_features(part)  # [b, 1280, 7, 7]
    return time.perf_counter() - start


def interleaved(backbone, loader, pixels: torch.Tensor, n_batches: int) -> tuple[list[float], list[float]]:
    """Per-batch seconds of ours (loader fetch + preprocess + forward) and bare, alternating
    batch by batch so both see the same load on a shared machine."""
    ours, bare, bare_chunked = [], [], []
    batches = iter(loader)
    for _ in range(n_batches):
        start = time.perf_counter()
        images, _ = next(batches)
        backbone(images)  # [B, 49, 1280]
        ours.append(time.perf_counter() - start)
        bare.append(time_bare(backbone.net, pixels, 1))
        bare_chunked.append(time_bare(backbone.net, pixels, 1, chunk=backbone.cpu_micro_batch))
    return ours, bare, bare_chunked


def make_pixels(batch: int, channels_last: bool = True) -> torch.Tensor:
    x = torch.randn(batch, 3, 224, 224)  # stands in for already-normalised 224 px images
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def main_comparison(args, backbone, dataset) -> None:
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    n_batches = args.images // args.batch_size
    pixels = make_pixels(args.batch_size)
    interleaved(backbone, loader, pixels, 1)  # warm-up
    ours, bare, chunked = [], [], []
    for _ in range(args.repeats):
        o, b, c = interleaved(backbone, loader, pixels, n_batches)
        ours, bare, chunked = ours + o, bare + b, chunked + c
    n = len(ours) * args.batch_size
    ours_ips, bare_ips, chunked_ips = n / sum(ours), n / sum(bare), n / sum(chunked)
    print(f"ours (Fashion-MNIST uint8 -> DataLoader -> preprocess -> forward): {ours_ips:8.1f} img/s")
    print(f"bare (normalised 224 px tensors -> one forward per batch):      {bare_ips:8.1f} img/s")
    print(f"bare, same CPU micro-batching ({backbone.cpu_micro_batch} images/forward):         "
          f"{chunked_ips:8.1f} img/s")
    for label, ref, times in (("bare", bare_ips, bare), ("bare micro-batched", chunked_ips, chunked)):
        paired = statistics.median(o / b for o, b in zip(ours, times))
        print(f"overhead ratio {label}/ours = {ref / ours_ips:.3f}x overall, {paired:.3f}x median "
              f"of paired batches (target <= 1.15x)")
    pre = time_preprocess(backbone, next(iter(loader))[0], n_batches)
    print(f"  preprocessing alone: {n_batches * args.batch_size / pre:8.1f} img/s")


def time_preprocess(backbone, images: torch.Tensor, n_batches: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n_batches):
            backbone.preprocess(images)
    return time.perf_counter() - start


def cheap_wins(args, backbone) -> None:
    """What the speed settings give on the bare forward (same run, same machine)."""
    n = max(1, args.images // (2 * args.batch_size))
    rows = [("channels_last + inference_mode", make_pixels(args.batch_size), torch.inference_mode),
            ("contiguous (NCHW) + inference_mode", make_pixels(args.batch_size, False), torch.inference_mode),
            ("channels_last + no_grad", make_pixels(args.batch_size), torch.no_grad)]
    print("\ncheap wins (bare forward):")
    for name, pixels, mode in rows:
        time_bare(backbone.net, pixels, 1, mode)
        print(f"  {name:38s} {n * args.batch_size / time_bare(backbone.net, pixels, n, mode):8.1f} img/s")
    for batch in (8, 4 * args.batch_size):
        pixels = make_pixels(batch)
        time_bare(backbone.net, pixels, 1)
        steps = max(1, args.images // (2 * batch))
        print(f"  batch {batch:<32d} {steps * batch / time_bare(backbone.net, pixels, steps):8.1f} img/s")
    current = torch.get_num_threads()
    for threads in sorted({1, current}):
        torch.set_num_threads(threads)
        pixels = make_pixels(args.batch_size)
        time_bare(backbone.net, pixels, 1)
        print(f"  torch threads {threads:<24d} {n * args.batch_size / time_bare(backbone.net, pixels, n):8.1f} img/s")
    torch.set_num_threads(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="images per timed pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cheap-wins", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone("efficientnet-lite0")
    dataset = FashionMNIST("test", limit=args.images + args.batch_size)
    print(f"efficientnet-lite0 @ 224 px, batch {args.batch_size}, {args.images} images, "
          f"{torch.get_num_threads()} torch threads, {args.workers} loader workers")
    main_comparison(args, backbone, dataset)
    if not args.no_cheap_wins:
        cheap_wins(args, backbone)


if __name__ == "__main__":
    main()
