"""Reconstruction table of the pixel decoder: Fashion-MNIST test split, EfficientNet-Lite0 features.

    .venv/bin/python bench/pixel_decoder_table.py [--images 500] [--rfid-images 100]

Trains whatever is missing with the demo configs (each step is skipped when its export exists):
stage Ia (configs/demo/autoencoder.yaml, the FAE), stage Ib (configs/demo/pixel_decoder_ib.yaml)
and stage II (configs/demo/pixel_decoder_ii.yaml). Then it decodes the first ``--images`` test
images with the Ib decoder and with the II decoder, from (a) the true backbone tokens and (b) the
FAE reconstructions x_hat, and prints PSNR / SSIM (all images) and rFID (the first
``--rfid-images``; FID at such small N is biased upwards: compare rows, not with papers).
Writes ``<out>/table.md``, ``<out>/table.json`` and ``<out>/recon_grid.png``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"autoencoder": "configs/demo/autoencoder.yaml", "ib": "configs/demo/pixel_decoder_ib.yaml",
           "ii": "configs/demo/pixel_decoder_ii.yaml"}


def ensure_export(stage: str, config: str, export: Path) -> Path:
    """Train ``stage`` with ``config`` unless ``export`` already exists (resumes a killed run)."""
    if (export / "config.json").is_file():
        print(f"[skip] {export} exists")
        return export
    from fae.training.cli import load_stage
    from fae.training.engine import train

    print(f"[train] fae train {stage} --config {config}", flush=True)
    result = train(load_stage(stage, str(ROOT / config), []))
    return Path(result["export"])


def run_dir_of(config: str) -> Path:
    from fae.config import read_yaml

    return ROOT / read_yaml(ROOT / config)["train"]["run_dir"]


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
    parser.add_argument("--rfid-images", type=int, default=100, help="of those, images for rFID (0: skip)")
    parser.add_argument("--out", default="runs/demo/pixel_decoder_table", help="output folder")
    args = parser.parse_args(argv)

    from fae.autoencoder.model import FAE
    from fae.autoencoder.pixel_decoder import PixelDecoder
    from fae.backbones import load_backbone
    from fae.data.datasets import DataConfig, build_dataset
    from fae.training.stages.pixel_decoder_eval import decode_inputs, held_out_inputs, save_grid, score_all

    fae_dir = ensure_export("autoencoder", CONFIGS["autoencoder"], run_dir_of(CONFIGS["autoencoder"]) / "export")
    ib_dir = ensure_export("pixel-decoder", CONFIGS["ib"], run_dir_of(CONFIGS["ib"]) / "export")
    ii_dir = ensure_export("pixel-decoder", CONFIGS["ii"], run_dir_of(CONFIGS["ii"]) / "export")

    start = time.perf_counter()
    torch.manual_seed(0)
    fae_ii = FAE.from_pretrained(ii_dir)  # the stage-II export: FAE + fine-tuned pixel decoder
    backbone = load_backbone(fae_ii.config.backbone, resolution=fae_ii.config.resolution)
    fae_ii.attach_backbone(backbone)
    decoders = {"Ib": PixelDecoder.from_pretrained(ib_dir).eval(), "II": fae_ii.pixel_decoder.eval()}
    dataset = build_dataset(DataConfig(name="fashion-mnist", split="test", limit=args.images))
    inputs = held_out_inputs(backbone, dataset, batch_size=100, fae=fae_ii)
    decoded = decode_inputs(decoders, inputs, batch_size=100)
    metrics = score_all(decoded, min(args.rfid_images, args.images))

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    grid = save_grid(decoded, out / "recon_grid.png", rows=8)
    table = build_table(metrics, min(args.rfid_images, args.images))
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps({"images": args.images, "rfid_images": args.rfid_images,
                                                "fae": str(fae_dir), "ib": str(ib_dir), "ii": str(ii_dir),
                                                "metrics": metrics}, indent=2) + "\n")
    print(table)
    print(f"grid: {grid}\ntable: {out / 'table.md'} ({time.perf_counter() - start:.0f} s to evaluate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
