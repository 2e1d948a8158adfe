"""Reconstruction table of the pixel decoder: Fashion-MNIST test split, EfficientNet-Lite0 features.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pixel_decoder_table.py [--images 500] [--rfid-images 50]

Trains whatever is missing into ``--out`` (each run is skipped when its export exists; a killed
run resumes): a short stage Ia FAE (demo/autoencoder.yaml with FAE_OVERRIDES below; or
pass ``--fae DIR`` to use an existing FAE export), stage Ib (demo/pixel_decoder_ib.yaml)
and stage II (demo/pixel_decoder_ii.yaml on that FAE and that Ib export). Then it decodes
the first ``--images`` test images with the Ib decoder and with the II decoder, from (a) the true
backbone tokens and (b) the FAE reconstructions x_hat, and prints PSNR / SSIM (all images) and
rFID (the first ``--rfid-images``; FID at such small N is biased upwards and noisy: compare rows,
not with published numbers). Writes ``table.md``, ``table.json`` and ``recon_grid.png`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from fae.autoencoder.model import FAE
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.backbones import BackboneConfig, TokenCache
from fae.config import read_yaml
from fae.data.datasets import DataConfig, build_dataset
from fae.training.engine import train
from fae.training.stages.pixel_decoder_heldout import HeldOut
from fae.training.stages.registry import load_stage

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"autoencoder": "demo/autoencoder.yaml", "ib": "demo/pixel_decoder_ib.yaml",
           "ii": "demo/pixel_decoder_ii.yaml"}


# A short FAE run for the table (the full demo FAE is demo/autoencoder.yaml).
FAE_OVERRIDES = ["train.steps=300", "train.ckpt_every=100", "train.eval_every=0", "eval.probe=false"]


def ensure_export(stage: str, config: str, overrides: list[str]) -> Path:
    """Train ``stage`` with ``config`` + overrides unless its export already exists."""
    run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.run_dir=")),
                   read_yaml(config)["train"]["run_dir"])
    export = ROOT / run_dir / "export"
    if (export / "config.json").is_file():
        print(f"[skip] {export} exists", flush=True)
        return export
    print(f"[train] fae train {stage} {' '.join(overrides)} --config {config}", flush=True)
    result = train(load_stage(stage, config, overrides))
    return Path(result["export"])


def build_table(metrics: dict[str, float], rfid_images: int) -> str:
    header = f"| decoder | input | PSNR (dB) | SSIM | rFID ({rfid_images} imgs) |"
    lines = [header, "|---|---|---|---|---|"]
    for decoder in ("Ib", "II"):
        for source, label in (("true", "(a) true backbone features"), ("fae", "(b) FAE reconstruction x_hat")):
            key = f"{decoder}/{source}"
            rfid = metrics.get(f"{key}/rfid")
            lines.append(f"| {decoder} | {label} | {metrics[key + '/psnr']:.2f} | {metrics[key + '/ssim']:.4f} | "
                         f"{'-' if rfid is None else f'{rfid:.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="held-out test images for PSNR/SSIM")
    parser.add_argument("--rfid-images", type=int, default=50, help="of those, images for rFID (0: skip)")
    parser.add_argument("--fae", default=None, help="an existing FAE export (default: train a short one)")
    parser.add_argument("--out", default="runs/demo/pixel_decoder_table", help="output folder")
    args = parser.parse_args(argv)

    out = ROOT / args.out
    cache = [f"token_cache_dir={out / 'token_cache'}"]  # one token cache for the three runs and the table
    if args.fae:
        fae_dir = Path(args.fae)
    else:
        fae_dir = ensure_export("autoencoder", CONFIGS["autoencoder"],
                                [f"train.run_dir={out / 'fae'}", *FAE_OVERRIDES, *cache])
    ib_dir = ensure_export("pixel-decoder", CONFIGS["ib"], [f"train.run_dir={out / 'ib'}", *cache])
    ii_dir = ensure_export("pixel-decoder", CONFIGS["ii"], [f"train.run_dir={out / 'ii'}", f"fae={fae_dir}",
                                                            f"init_from={ib_dir}", *cache])

    start = time.perf_counter()
    torch.manual_seed(0)
    fae_ii = FAE.from_pretrained(ii_dir)  # the stage-II export: FAE + fine-tuned pixel decoder
    backbone = BackboneConfig(fae_ii.config.backbone, fae_ii.config.resolution).load()
    fae_ii.attach_backbone(backbone)
    decoders = {"Ib": PixelDecoder.from_pretrained(ib_dir).eval(), "II": fae_ii.pixel_decoder.eval()}
    data = DataConfig(name="fashion-mnist", split="test", limit=args.images)
    tokens, _ = TokenCache(out / "token_cache", backbone).tokens(data)  # [N, T, D]
    held_out = HeldOut(build_dataset(data), tokens, fae_ii, batch_size=100)
    decoded = held_out.decode(decoders)
    metrics = held_out.scores(decoded, rfid=False)  # PSNR / SSIM over every image
    rfid_images = min(args.rfid_images, args.images)
    if rfid_images >= 2:  # rFID over the first rfid_images only (Inception on CPU is slow)
        subset = HeldOut(Subset(build_dataset(data), range(rfid_images)), tokens[:rfid_images], fae_ii, 100)
        metrics.update({k: v for k, v in subset.scores(subset.decode(decoders), rfid=True).items()
                        if k.endswith("/rfid")})

    out.mkdir(parents=True, exist_ok=True)
    grid = held_out.save_grid(decoded, out / "recon_grid.png", rows=8)
    table = build_table(metrics, rfid_images)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps({"images": args.images, "rfid_images": args.rfid_images,
                                                "fae": str(fae_dir), "ib": str(ib_dir), "ii": str(ii_dir),
                                                "metrics": metrics}, indent=2) + "\n")
    print(table)
    print(f"grid: {grid}\ntable: {out / 'table.md'} ({time.perf_counter() - start:.0f} s to evaluate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
