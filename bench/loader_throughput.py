"""Images/s of one loader worker on the ImageNet path: JPEG decode + ADM center crop + flip.

Writes ``--images`` JPEGs (quality 90) of ImageNet-like sizes in the ImageNet layout (a few class
folders) under a temporary folder, then reads them through the image-folder dataset
(``fae.data.datasets.build_dataset``, ``data.name: imagefolder``, ``image_size`` 256, flip on) in
this one process, as one DataLoader worker would, once per decode path, side by side:

  exact   full-size decode, BOX halvings, bicubic resize, crop (the ADM path; the default)
  draft   libjpeg decodes at 1/2, 1/4 or 1/8 scale first (PIL ``Image.draft``), then the same crop
  cv2     (when OpenCV is importable; for reference only) full-size ``cv2.imdecode``, then the ADM crop

and the difference of each path's crops from the exact ones (max and mean absolute, in grey levels,
over all images; same flips). Then the workers stage Ia needs at ``--step-rate`` images/s.

Sizes: a photo's long side is 500 px with the usual Flickr aspect ratios (500x375, 500x333, ...)
for 85% of the files; the other 15% are larger (short side 512-1600 px), as ImageNet's train set
holds a tail of large photos. The pixels are crops of scikit-image's sample photos plus a little
noise, so the JPEGs carry photo-like detail (decode cost depends on it); the bench prints their
bytes per pixel (ImageNet's train JPEGs: about 110 KB for 0.2 MP, ~0.5 byte/pixel).

    .venv/bin/python bench/loader_throughput.py [--images 2000] [--size 256] [--step-rate 550]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fae.data.datasets import DataConfig, build_dataset
from fae.data.imagefolder import workers_needed
from fae.data.transforms import center_crop_arr, random_hflip, to_chw_uint8

NOISE = 3.0  # grey levels of Gaussian noise added to every pixel
COMMON = [(500, 375), (500, 333), (375, 500), (333, 500), (500, 500), (500, 400), (400, 500), (500, 366)]


def sources() -> list[np.ndarray]:
    """RGB sample photos of scikit-image (offline), as large uint8 arrays."""
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    photos = []
    for name in names:
        try:
            img = getattr(data, name)()
        except Exception:  # a missing optional sample
            continue
        if img.ndim == 3 and img.shape[2] == 3:
            photos.append(img)
    return photos


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    if rng.random() < 0.85:
        return COMMON[rng.integers(len(COMMON))]
    short = int(rng.integers(512, 1601))
    long = min(2400, int(short * rng.uniform(1.0, 1.5)))
    return (long, short) if rng.random() < 0.7 else (short, long)


def make_folder(root: Path, count: int, classes: int = 8, seed: int = 0) -> Path:
    """``count`` JPEGs in ``root/train/<class>/`` (ImageNet layout)."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in sources()]
    noise = rng.normal(0.0, NOISE, (2400, 2400, 3)).astype(np.float32)  # sliced per image
    for i in range(count):
        width, height = image_size(rng)
        photo = photos[i % len(photos)]
        # a random crop of the photo (at a random scale) resized to the target size
        scale = rng.uniform(0.5, 1.0)
        cw, ch = int(photo.width * scale), int(photo.height * scale)
        left, top = int(rng.integers(0, photo.width - cw + 1)), int(rng.integers(0, photo.height - ch + 1))
        image = photo.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)
        # sensor-like noise: upscaled crops alone are smoother (cheaper to decode) than photos
        dy, dx = int(rng.integers(0, 2400 - height + 1)), int(rng.integers(0, 2400 - width + 1))
        noisy = np.asarray(image, dtype=np.float32) + noise[dy:dy + height, dx:dx + width]
        image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"img_{i:05d}.JPEG", quality=90)
    return root


def read_interleaved(datasets: dict[str, Any]) -> dict[str, tuple[np.ndarray, list[torch.Tensor]]]:
    """Per path: seconds spent inside ``dataset[i]`` for each item (the worker's work) and the
    items. The paths take turns image by image, so load from other users of a shared machine hits
    them alike; the flip of item i is seeded by i, so every path flips the same items."""
    out = {name: (np.zeros(len(ds)), []) for name, ds in datasets.items()}
    n = len(next(iter(datasets.values())))
    for i in range(n):
        for name, dataset in datasets.items():
            torch.manual_seed(i)
            start = time.perf_counter()
            image, _ = dataset[i]
            out[name][0][i] = time.perf_counter() - start
            out[name][1].append(image)
    return out


class Cv2Dataset:
    """The same items decoded by OpenCV (full size) and cropped by the ADM path."""

    def __init__(self, base):
        import cv2

        self.cv2, self.base = cv2, base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        cv2 = self.cv2
        bgr = cv2.imdecode(np.fromfile(self.base.files[i], dtype=np.uint8), cv2.IMREAD_COLOR)
        image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        tensor = to_chw_uint8(center_crop_arr(image, self.base.image_size))
        return (random_hflip(tensor) if self.base.flip else tensor), self.base.labels[i]


def differences(items: list[torch.Tensor], reference: list[torch.Tensor]) -> tuple[int, float, float]:
    """(max abs difference, mean abs difference, share of images that differ at all)."""
    worst, total, pixels, changed = 0, 0.0, 0, 0
    for a, b in zip(items, reference):
        d = (a.int() - b.int()).abs()
        worst = max(worst, int(d.max()))
        total += float(d.sum())
        pixels += d.numel()
        changed += int(bool(d.any()))
    return worst, total / pixels, changed / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="ADM crop size")
    parser.add_argument("--step-rate", type=float, default=550.0,
                        help="images/s a GPU's stage-Ia step consumes (gpu_check.json: fae_ia images_per_s; "
                             "default: an estimate for one H100/H200, ~0.9 TFLOP/image at ~50%% MFU)")
    parser.add_argument("--folder", type=Path, help="read --images files of this ImageNet-layout folder "
                                                    "(e.g. /data/imagenet) instead of writing synthetic ones")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker = one process on one core

    with tempfile.TemporaryDirectory() as tmp:
        root = args.folder
        if root is None:
            start = time.perf_counter()
            root = make_folder(Path(tmp), args.images)
            print(f"wrote {args.images} JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
        limit = args.images if args.folder else None  # a real folder: --images evenly spaced files
        data = {mode: build_dataset(DataConfig(name="imagefolder", root=str(root), image_size=args.size,
                                               flip=True, decode=mode, limit=limit)) for mode in ("exact", "draft")}
        sizes = [Image.open(f).size for f in data["exact"].files]
        large = sum(min(s) >= 2 * args.size for s in sizes)
        megapixels = sum(w * h for w, h in sizes) / len(sizes) / 1e6
        file_bytes = sum(f.stat().st_size for f in data["exact"].files) / len(sizes)
        print(f"{len(sizes)} images, mean {megapixels:.2f} MP, {file_bytes / 1e3:.0f} KB "
              f"({file_bytes / megapixels / 1e6:.2f} byte/pixel); {large} ({large / len(sizes):.0%}) with short "
              f"side >= {2 * args.size} (the ones draft decodes at reduced scale)")
        paths = dict(data)
        try:
            paths["cv2 (reference)"] = Cv2Dataset(data["exact"])
        except ImportError:
            pass
        read_interleaved({"exact": data["exact"]})  # warm the page cache: every path reads from memory
        timed = read_interleaved(paths)
    n = len(sizes)
    is_large = np.array([min(s) >= 2 * args.size for s in sizes])
    reference = timed["exact"][1]
    rows = {name: (seconds.sum(), differences(items, reference)) for name, (seconds, items) in timed.items()}
    print(f"\n{'decode':<16} {'images/s/worker':>16} {'x exact':>8} {'large: img/s':>13} {'others: img/s':>14} "
          f"{'max |diff|':>11} {'mean |diff|':>12} {'images changed':>15}")
    for name, (seconds, items) in timed.items():
        total, (worst, mean, changed) = rows[name]
        print(f"{name:<16} {n / total:>16.1f} {rows['exact'][0] / total:>8.2f} "
              f"{is_large.sum() / seconds[is_large].sum():>13.1f} {(~is_large).sum() / seconds[~is_large].sum():>14.1f} "
              f"{worst:>11d} {mean:>12.3f} {changed:>15.1%}")
    changed_large = [differences([a], [b]) for a, b, big in zip(timed["draft"][1], reference, is_large) if big]
    if changed_large:
        means = np.array([m for _, m, _ in changed_large])
        print(f"draft vs exact on the {len(means)} large images: mean |diff| per image median {np.median(means):.2f}, "
              f"max {means.max():.2f} grey levels")
    print(f"\nstage Ia at {args.step_rate:.0f} images/s needs (x1.25 headroom):")
    for name in ("exact", "draft"):
        rate = n / rows[name][0]
        print(f"  {name:<6} {workers_needed(args.step_rate, rate)} loader workers "
              f"(bare {math.ceil(args.step_rate / rate)}), at {rate:.1f} images/s each")


if __name__ == "__main__":
    main()
